"""Hypothesis profiles: a fixed set of examples under CI, fresh exploration elsewhere.

``CI=true`` (set by ``.ci/run``) loads the ``ci`` profile: derandomized and without the example
database, so one commit always tests the same examples. Locally the ``dev`` profile draws new
examples on every run (``--hypothesis-seed=N`` replays one draw). ``HYPOTHESIS_PROFILE``
picks a profile by name.
"""
import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)

_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if _ci else "dev"))
