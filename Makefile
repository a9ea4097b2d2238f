# make demo  - set up .venv and run the main job on the built-in shapes world, end to end
# make test  - set up .venv and run the test suite (what CI runs)
PY_BOOT ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
FULL    ?= 0
VENV_GB ?= 7
STAMP   := $(VENV)/.installed
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: demo test test-fast lint format bench clean setup leaderboard

setup: $(STAMP)

# torch 2.14.1 / torchvision 0.29.1 come from the machine's local wheel index (pip.conf find-links/extra-index).
# The venv takes about 6.5 GB (torch 2.14.1 is a CUDA build: 5.3 GB of it is nvidia-*, torch and triton), so where it
# goes is decided first (.ci/venv_place.py): beside the checkout when the disk has room, else on a RAM-backed tmpfs
# (/dev/shm) with VENV linking to it, else a clear error. A full disk otherwise fails half-way through pip with
# "[Errno 28] No space left on device". --no-cache-dir: the wheels are not kept twice.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PY_BOOT) .ci/venv_place.py $(VENV) $(VENV_GB)
	test -x $(PY) || $(PY_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-cache-dir --upgrade pip
	$(PY) -m pip install --quiet --no-cache-dir torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet --no-cache-dir -e '.[dev]'
	touch $(STAMP)

# make demo: 30 min on 2 cores, set-up included: DEMO_START is when make began (before the venv set-up), and the
# training stages' budgets are fitted to what is left (zoo/demo.py Schedule). make demo FULL=1: the long settings
DEMO_START := $(shell date +%s)
demo: $(STAMP)
	DEMO_START=$(DEMO_START) FULL=$(FULL) $(PY) -m zoo.demo

# lint first: a style or pyflakes error fails CI before the (longer) tests run
test: $(STAMP) lint
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test-fast: $(STAMP)
	$(PY) -m pytest -q tests -m "not slow"

# every bench/bench_*.py, one JSON + markdown summary in bench/results/ (diff two machines' runs)
bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf logs .zoo_cache .pytest_cache

# the headline table (DALL·E 1, GLIDE, unCLIP diffusion / AR prior on one shapes protocol); needs `make demo` first
leaderboard: $(STAMP)
	PY=$(PY) bash experiments/leaderboard/run.sh
