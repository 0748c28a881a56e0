# Two commands do all set-up on a fresh machine with only python3:
#   make demo   creates .venv, installs the package, runs the main job on the embedded simulator
#   make test   creates .venv, installs with the dev and carla extras, lints and runs the tests
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEMO_OUT ?= runs/demo

.PHONY: demo test lint bench clean tools

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: $(PY) pyproject.toml
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(PIP) install --quiet -e '.[dev,carla]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/caril demo --out $(DEMO_OUT)

test: $(VENV)/.installed-dev tools
	$(PY) -m ruff check .
	$(VENV)/bin/hadolint docker/Dockerfile
	SDL_VIDEODRIVER=dummy SDL_AUDIODRIVER=dummy $(PY) -m pytest -q

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check .
	$(VENV)/bin/hadolint docker/Dockerfile

# docker-compose validates docker/compose.yaml in the tests (no Docker engine needed); Debian packages it
tools:
	@command -v docker-compose >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null); } || \
	  echo "docker-compose is missing: install it (apt-get install docker-compose) for the docker checks"

bench: $(VENV)/.installed-dev
	for b in sim collect train policy serve; do $(VENV)/bin/caril bench $$b --json runs/bench/$$b.json || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
