# Two commands on a fresh Debian 12 machine with Python 3.11:
#   make run    the DAG once end to end (airflow dags test, SQLite, local Redis with RedisJSON); needs
#               only Python 3.11 and Redis (scripts/setup.sh installs them)
#   make test   the test suite (starts its own Redis with RedisJSON on a free port); first installs what
#               the Celery-stack tests need: PostgreSQL, Chromium, the Python 3.10 GPU-worker venv
#   make test-unit   the unit tier only, under a minute (after a first make setup)
# And, after make run:
#   make ui     the Airflow UI over make run's .airflow/ (api-server, scheduler, dag-processor on
#               127.0.0.1:8080, RECSYS_UI_PORT to change); prints the address and login; Ctrl-C stops it
.PHONY: run test test-unit ui setup setup-stack lint clean

run: setup
	scripts/run_local.sh

test: setup-stack
	scripts/run_tests.sh

# The quick loop: only the unit tier (no Redis, no training, no Airflow run). Needs `make setup` done once.
test-unit:
	scripts/run_tests.sh -m unit

ui: setup
	scripts/ui.sh

setup:
	scripts/setup.sh

setup-stack:
	scripts/setup.sh --stack

lint: setup
	.venv/bin/ruff check recsys_tasks dags plugins tests

clean:
	@echo "make clean: stops the local Redis and deletes .airflow/ (metadata, logs), .redis/ (its data),"
	@echo "  .partitions/ and artifacts/ (every run directory: models, recommendations, report.json, report.md, plots)"
	-.venv/bin/python -m recsys_tasks.ops.local_redis stop --dir .redis
	rm -rf .airflow .airflow.* .redis .partitions artifacts
