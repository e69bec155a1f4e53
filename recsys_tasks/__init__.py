"""Offline batch recommender: seven pipeline stages, importable and runnable without Airflow.

Each stage function takes a :class:`~recsys_tasks.config.Config` and a run directory and returns a
small JSON-able summary. Importing this package imports nothing heavy.
"""

STAGES = ("generate_data", "transform", "fit_retrieval", "fit_ranking", "score", "evaluate", "load_redis")
