"""Provenance: the commit (and whether the tree was dirty), the versions, the device and the date of a record."""
import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import convnorm
from convnorm.experiments import provenance as prov
from convnorm.experiments.provenance import cpu_name, device_name, git_commit, provenance, versions

REPO = Path(__file__).resolve().parents[2]
_COMMIT = re.compile(r"[0-9a-f]{40}(-dirty)?")


def _git(*args, cwd, env=None):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, env=env).stdout.strip()


def _inside_a_git_checkout() -> bool:
    try:
        return _git("rev-parse", "--is-inside-work-tree", cwd=REPO) == "true"
    except (OSError, subprocess.CalledProcessError):
        return False


@pytest.fixture
def git_env(tmp_path, monkeypatch):
    """A fresh repository with one commit of one tracked file; ``GIT_DIR``/``GIT_WORK_TREE`` point git at it
    wherever it runs (git_commit runs git from the package's own folder)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    env = dict(os.environ, HOME=str(tmp_path), GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    for key in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        env.pop(key, None)
    _git("init", "-q", cwd=repo, env=env)
    (repo / "tracked.txt").write_text("one\n")
    _git("add", "tracked.txt", cwd=repo, env=env)
    _git("-c", "commit.gpgsign=false", "commit", "-q", "-m", "first", cwd=repo, env=env)
    head = _git("rev-parse", "HEAD", cwd=repo, env=env)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_DIR", str(repo / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(repo))
    return repo, head


# -- git commit -------------------------------------------------------------------------------

@pytest.mark.skipif(not _inside_a_git_checkout(), reason="the package is not in a git checkout")
def test_git_commit_inside_this_repository_is_its_head():
    before = _git("rev-parse", "HEAD", cwd=REPO)
    commit = git_commit()
    assert _COMMIT.fullmatch(commit), commit
    assert commit.split("-")[0] == before == _git("rev-parse", "HEAD", cwd=REPO)


def test_git_commit_of_a_clean_tree_is_the_bare_head(git_env):
    _, head = git_env
    assert re.fullmatch(r"[0-9a-f]{40}", head)
    assert git_commit() == head


def test_git_commit_marks_uncommitted_changes_to_tracked_files(git_env):
    repo, head = git_env
    (repo / "tracked.txt").write_text("two\n")
    assert git_commit() == head + "-dirty"


def test_edited_records_and_docs_do_not_make_the_tree_dirty(git_env):
    """A study's workers rewrite their tracked running records all the time: a process that
    starts beside them runs committed code, and only code edits mark it ``-dirty``."""
    repo, _ = git_env
    files = {"results/study/run.json": "{}\n", "docs/guide.md": "text\n", "src/pkg/module.py": "x = 1\n",
             "resultsfile.txt": "a file whose name only starts like the folder\n"}
    for path, text in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    _git("add", *files, cwd=repo)
    _git("-c", "commit.gpgsign=false", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "more",
         cwd=repo)
    head = _git("rev-parse", "HEAD", cwd=repo)
    (repo / "results/study/run.json").write_text('{"status": "running"}\n')
    (repo / "docs/guide.md").write_text("edited\n")
    assert git_commit() == head
    (repo / "src/pkg/module.py").write_text("x = 2\n")
    assert git_commit() == head + "-dirty"
    _git("checkout", "src/pkg/module.py", cwd=repo)
    (repo / "resultsfile.txt").write_text("edited\n")
    assert git_commit() == head + "-dirty"


def test_untracked_files_do_not_make_the_tree_dirty(git_env):
    repo, head = git_env
    (repo / "scratch.txt").write_text("not tracked\n")
    assert git_commit() == head


def test_git_commit_outside_a_git_repository_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "no-such-repository"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    assert git_commit() == "unknown"


def test_git_commit_without_git_installed_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a folder without a git executable
    assert git_commit() == "unknown"


def test_a_failing_git_call_gives_unknown(monkeypatch):
    def fail(cmd, **kwargs):
        raise subprocess.CalledProcessError(128, cmd, stderr="fatal: not a git repository")

    monkeypatch.setattr(prov.subprocess, "run", fail)
    assert git_commit() == "unknown"


# -- machine and versions ---------------------------------------------------------------------

def test_cpu_name_is_the_model_name_from_proc_cpuinfo():
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo on this system")
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    if not names:
        pytest.skip("/proc/cpuinfo names no model on this machine")
    assert cpu_name() == names[0]


def test_cpu_name_falls_back_to_the_platform_when_cpuinfo_is_unreadable(monkeypatch):
    def unreadable(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(prov, "open", unreadable, raising=False)
    monkeypatch.setattr(prov.platform, "processor", lambda: "")
    monkeypatch.setattr(prov.platform, "machine", lambda: "test-machine")
    assert cpu_name() == "test-machine"
    monkeypatch.setattr(prov.platform, "processor", lambda: "test-processor")
    assert cpu_name() == "test-processor"


@pytest.mark.parametrize("threads", [1, 2])
def test_device_name_of_the_cpu_includes_the_thread_count(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        name = device_name(torch.device("cpu"))
    finally:
        torch.set_num_threads(before)
    assert name == f"{cpu_name()} ({threads} threads)"


def test_versions_name_python_torch_numpy_and_convnorm():
    got = versions()
    assert got["python"] == platform.python_version()
    assert got["torch"] == torch.__version__
    assert got["numpy"] == np.__version__
    assert got["convnorm"] == convnorm.__version__
    assert ("cuda" in got) == torch.cuda.is_available()
    assert all(isinstance(v, str) for v in got.values())


@pytest.fixture(autouse=True)
def _fresh_running_commit():
    """Tests here point git elsewhere: none may leave its commit cached for the others."""
    prov.running_commit.cache_clear()
    yield
    prov.running_commit.cache_clear()


def test_running_commit_keeps_the_commit_the_process_first_saw(git_env):
    """A worker that started at one commit keeps naming it after the checkout moves on (or is
    edited): its records name the code it loaded."""
    repo, head = git_env
    assert prov.running_commit() == head
    (repo / "tracked.txt").write_text("edited\n")
    assert git_commit() == head + "-dirty"
    assert prov.running_commit() == head
    assert provenance(torch.device("cpu"))["git_commit"] == head


# -- the whole block --------------------------------------------------------------------------

def test_provenance_has_commit_versions_device_and_an_iso_utc_date():
    before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    block = provenance(torch.device("cpu"))
    after = datetime.datetime.now(datetime.timezone.utc)
    assert set(block) == {"git_commit", "process", "versions", "device", "device_type", "date"}
    assert re.fullmatch(r"[0-9a-f]{12}", block["process"]) and block["process"] == prov.process_id()
    assert block["git_commit"] == "unknown" or _COMMIT.fullmatch(block["git_commit"])
    assert block["versions"] == versions()
    assert block["device_type"] == "cpu"
    assert block["device"] == device_name(torch.device("cpu"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", block["date"]), block["date"]  # seconds, UTC
    date = datetime.datetime.fromisoformat(block["date"])
    assert date.tzinfo is not None and date.utcoffset() == datetime.timedelta(0)
    assert before <= date <= after


def test_provenance_is_plain_json_data(tmp_path):
    from convnorm.experiments.records import read_json, write_json

    block = provenance(torch.device("cpu"))
    write_json(str(tmp_path / "p.json"), {"kind": "x", "provenance": block})
    assert read_json(str(tmp_path / "p.json"))["provenance"] == block
