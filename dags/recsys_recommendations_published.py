r"""
### Recommendations published (downstream of `offline_batch_recsys`)

Scheduled on the Asset `offline_batch_recsys_recommendations`
(`redis://redis-recs/offline_batch_recsys/recommendations`), which `offline_batch_recsys.load_redis`
updates each time it publishes a run to Redis. One run of this DAG follows each publish; a load that is
skipped (Redis already holds a newer logical date) or refused (quality gate) emits no event, so nothing
runs. The event's extra carries `run_id`, `logical_date`, `users`, `completed_at` and `manifest_key`.

**Unpaused on creation** (`is_paused_upon_creation=False`, unlike every other DAG of the stack): it starts
only on a publish event, never on a clock, so it cannot start work by itself; paused, the events of every
publish would pile up unseen until someone unpaused it. `announce` runs on the `default` queue (no GPU):
compose's `airflow-worker` and the native stack's `default-worker` consume it.

The task only logs what was published: it is the template for consumers (cache warm-up, a notice to the
serving team, an online A/B switch) that must start when fresh lists are live.
"""

from __future__ import annotations

import logging

import pendulum
from airflow.sdk import dag, get_current_context, task
from recsys_airflow import recommendations_asset


@dag(
    dag_id="recsys_recommendations_published",
    schedule=[recommendations_asset()],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    is_paused_upon_creation=False,
    tags=["recsys", "redis"],
    doc_md=__doc__,
)
def recsys_recommendations_published() -> None:
    @task
    def announce() -> list[dict]:
        events = get_current_context()["triggering_asset_events"]
        published = [dict(event.extra) for asset_events in events.values() for event in asset_events]
        for extra in published:
            logging.getLogger("recsys_tasks.published").info(
                "recommendations live: run %s (logical date %s), %s users", extra.get("run_id"),
                extra.get("logical_date"), extra.get("users"))
        return published

    announce()


recsys_recommendations_published()
