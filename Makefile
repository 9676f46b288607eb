.PHONY: install demo lint test test-slow test-all bench clean

install:
	@bash scripts/install.sh

demo: install
	@bash scripts/demo.sh

lint: install
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench
	.venv/bin/mypy src

test: lint
	.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 -m "not slow" tests

test-slow: install
	.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 -m slow tests

test-all: lint
	.venv/bin/python -m pytest -q -p no:cacheprovider --durations=15 tests

bench: install
	.venv/bin/python bench/instance_create.py --runs 3
	.venv/bin/python bench/list_instances.py
	.venv/bin/python bench/idle_memory.py --runs 4
	.venv/bin/python bench/storage_cow.py
	.venv/bin/python bench/snapshot_api.py --runs 20
	.venv/bin/python bench/debian_density.py
	.venv/bin/python bench/backup_throughput.py
	.venv/bin/python bench/backup_verify.py
	.venv/bin/python bench/cli_latency.py --runs 3
	.venv/bin/python bench/eip_move.py --moves 20

clean:
	-.venv/bin/cloudlet down --purge
