# The README's commands. `make run` installs and runs the whole pipeline on the embedded default;
# `make test` installs and runs the test suite. Both are safe to rerun.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

export GX_ANALYTICS_ENABLED := false
export TRL_EXPERIMENTAL_SILENCE := 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export DO_NOT_TRACK := 1
# dvc.yaml calls `rl2f`: the venv must come first on PATH.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup chromium run seeds exp test test-fast lint compile lock clean

setup: $(STAMP)

# Install from the lock (no resolution, so no backtracking); torch is the CPU build on disk.
# --compile writes bytecode: the machines set PYTHONDONTWRITEBYTECODE, and imports are 2-3x
# slower without it.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=25"
	$(PIP) install --quiet --compile -r requirements.lock
	$(PIP) install --quiet --compile --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Headless Chromium renders the HTML report in its test (Debian packages; root on these machines).
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

run: setup
	$(VENV)/bin/dvc repro

# The default run repeated over training seeds (the tiny model, GRPO, distillation; the
# evaluation's tasks and random numbers stay fixed), each as a DVC experiment, then the spread
# of the headline numbers in reports/seeds.md. About three times `make run`.
SEEDS ?= 0 1 2
seeds: setup
	for seed in $(SEEDS); do \
		$(VENV)/bin/dvc exp run -n seed-$$seed -S model.tiny.seed=$$seed -S train.seed=$$seed \
			-S distill.seed=$$seed -S rollout.sampling.seed=$$seed && \
		mkdir -p reports/seeds/$$seed && \
		cp reports/metrics.json reports/comparisons.json reports/seeds/$$seed/ || exit 1; \
	done
	$(VENV)/bin/rl2f seeds $(addprefix reports/seeds/,$(SEEDS)) --out reports

# A profile (profiles/NAME.yaml) as a DVC experiment named after it, beside the default:
# `make exp PROFILE=resolve`. Its keys are passed with -S, so DVC records them (it cannot see an
# RL2F_PROFILE overlay). Leaves them in params.yaml, as any workspace experiment does
# (`git checkout params.yaml` goes back).
PROFILE ?= resolve
exp: setup
	args="$$($(VENV)/bin/rl2f profile $(PROFILE))" && \
		printf '%s\n' "$$args" | xargs -d '\n' $(VENV)/bin/dvc exp run -n $(PROFILE)

test: setup chromium
	$(VENV)/bin/pytest -q -ra

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests components pipelines benchmarks
	$(VENV)/bin/ruff format --check src tests components pipelines benchmarks
	$(VENV)/bin/hadolint Dockerfile k8s/images/mlflow.Dockerfile

compile: setup
	$(VENV)/bin/rl2f pipeline compile

# Re-resolve requirements.lock after changing pyproject.toml (uv resolves in seconds; torch
# resolves to the CPU build on disk through --find-links).
lock: setup
	$(PIP) install --quiet uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
		--find-links /opt/wheels --no-header -o requirements.lock
	# Plain torch==X (no +cpu label): installable from the public index as well as from disk.
	sed -i 's/^torch==\(.*\)+cpu$$/torch==\1/' requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
