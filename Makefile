# Two commands on a fresh Debian 12 machine with Python 3.11:
#   make run    the DAG once end to end (airflow dags test, SQLite, local Redis with RedisJSON)
#   make test   the test suite (starts its own Redis with RedisJSON on a free port)
#   make test-unit   the unit tier only, under a minute (after a first make setup)
.PHONY: run test test-unit setup lint clean

run: setup
	scripts/run_local.sh

test: setup
	scripts/run_tests.sh

# The quick loop: only the unit tier (no Redis, no training, no Airflow run). Needs `make setup` done once.
test-unit:
	scripts/run_tests.sh -m unit

setup:
	scripts/setup.sh

lint: setup
	.venv/bin/ruff check recsys_tasks dags plugins tests

clean:
	@echo "make clean: stops the local Redis and deletes .airflow/ (metadata, logs), .redis/ (its data),"
	@echo "  .partitions/ and artifacts/ (every run directory: models, recommendations, report.json, report.md, plots)"
	-.venv/bin/python -m recsys_tasks.ops.local_redis stop --dir .redis
	rm -rf .airflow .airflow.* .redis .partitions artifacts
