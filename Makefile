# The two commands a newcomer needs: `make demo` (the main job) and `make test`.
.PHONY: setup demo test test-all lint bench down

setup:
	@scripts/setup.sh

demo: setup
	.venv/bin/crux demo

test: setup
	.venv/bin/ruff check crux flows tests bench
	.venv/bin/mypy
	.venv/bin/pytest

test-all: setup
	.venv/bin/pytest -m "not gpu"

lint: setup
	.venv/bin/ruff check crux flows tests bench
	.venv/bin/ruff format --check crux flows tests bench

down:
	.venv/bin/crux labelstudio down
