# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv with Python 3.12 and install the pinned set in constraints.txt.
SHELL := /bin/bash
# The first candidate that really runs Python 3.12 (a pyenv shim may exist without working).
PYTHON312 ?= $(shell for p in python3.12 $(HOME)/.pyenv/versions/3.12*/bin/python /usr/local/bin/python3.12; do \
  command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null \
  && { command -v $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

# CALVIN's simulator source (calvin_env-*.tar.gz, not on PyPI): installed when this folder holds it.
CALVIN_SRC ?= ../shared/calvin
export CALVIN_SRC

.PHONY: setup sysdeps calvin demo test test-fast bench constraints

setup: sysdeps $(STAMP) calvin

# Headless rendering for MuJoCo (EGL/OSMesa) and FFmpeg for LeRobot's video decoder (torchcodec);
# installed only when missing and we are root.
SYS_PACKAGES := libegl1 libegl-mesa0 libgl1 libosmesa6 ffmpeg
sysdeps:
	@if ! ldconfig -p | grep -q libEGL_mesa.so.0 || ! ldconfig -p | grep -q libOSMesa || ! command -v ffmpeg >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYS_PACKAGES) >/dev/null; \
	  else echo "warning: install $(SYS_PACKAGES) (headless rendering, video decoding)"; fi; fi

$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PYTHON312)" || { echo "Python 3.12 not found: install it or run make PYTHON312=/path/to/python3.12"; exit 1; }
	test -x $(BIN)/python || $(PYTHON312) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,sim,libero]"
	$(BIN)/python -m lerobot_roboalign.libero_setup
	touch $@

# calvin_env unpacked into .venv/src (ignored) and installed editable, so that its REPO_BASE
# (parents[2] of its modules) finds conf/ and data/; its deps come pinned from the `calvin` extra.
# Skipped (the real-simulator tests then skip) without the tarball; a no-op once installed.
calvin: $(STAMP)
	@tarball=$$(ls $(CALVIN_SRC)/calvin_env-*.tar.gz 2>/dev/null | head -n 1); \
	if [ -z "$$tarball" ]; then echo "note: no calvin_env-*.tar.gz in $(CALVIN_SRC): CALVIN simulator tests will skip"; \
	elif [ ! -f $(VENV)/src/calvin_env/.installed-$$(basename $$tarball) ]; then \
	  rm -rf $(VENV)/src/calvin_env && mkdir -p $(VENV)/src && tar xzf $$tarball -C $(VENV)/src && \
	  $(BIN)/pip install -q -c constraints.txt -e ".[dev,sim,libero,calvin]" && \
	  $(BIN)/pip install -q --no-deps -e $(VENV)/src/calvin_env && \
	  touch $(VENV)/src/calvin_env/.installed-$$(basename $$tarball); fi

demo: setup
	$(BIN)/roboalign demo $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

bench: setup
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done
	$(BIN)/python benchmarks/readme_figures.py   # the README's figures from the new results

# Re-pin after changing dependencies (run in a working .venv).
constraints:
	$(BIN)/pip freeze --exclude-editable | grep -v '^lerobot_policy_roboalign' > constraints.txt
