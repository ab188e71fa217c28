# pld-ros: the two commands of the README, and the helpers around them.
# Every target bootstraps first when needed (scripts/bootstrap.sh is idempotent and quick when
# nothing changed).
SHELL := /bin/bash
IN_ENV := scripts/in_env.sh

.PHONY: bootstrap demo test lint typecheck pytest test-faults docker-test constraints clean

bootstrap:
	@bash scripts/bootstrap.sh

## Run the main job on simulated hardware.
demo: bootstrap
	$(IN_ENV) pld demo --episodes $${PLD_DEMO_EPISODES:-30}

## Lint, type checks and the test suite (what CI runs).
test: bootstrap
	$(IN_ENV) scripts/check.sh

lint: bootstrap
	$(IN_ENV) ruff check src tests bench launch scripts
	$(IN_ENV) ruff format --check src tests bench launch scripts

typecheck: bootstrap
	$(IN_ENV) mypy

## The test suite alone, in the two processes `make test` runs it in.
pytest: bootstrap
	$(IN_ENV) scripts/run_tests.sh

## The fault-injection suite alone (docs/faults.md; `make test` runs it too).
test-faults: bootstrap
	$(IN_ENV) python -m pytest -m faults

## Build the robot image and run the launch files in it on the simulated profiles (needs Docker; docs/docker.md).
docker-test:
	bash docker/test.sh

## Re-pin requirements/constraints.txt from the current venv.
constraints: bootstrap
	$(IN_ENV) bash -c 'pip freeze --exclude-editable | grep -v -E "^(#|pld_ros==|pld_msgs==)" | sed "s/^torch==\([0-9.]*\)+cpu/torch==\1/" > requirements/.constraints.new'
	@echo "review requirements/.constraints.new, then move it over requirements/constraints.txt"

clean:
	rm -rf build install log
