"""The bookkeeping every stage shares: the progress line and the stage wrapper's summary."""

from __future__ import annotations

import json
import logging

import pytest

from recsys_tasks.paths import RunPaths
from recsys_tasks.runtime import Progress, peak_rss_bytes, rss_bytes, stage_run

MESSAGE = "did %d/%d rows (%.0f rows/s, %.0fs left)"


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "recsys_tasks.progress_test"]


def test_progress_logs_the_first_update_then_waits_for_its_interval_and_logs_the_end_once(caplog):
    caplog.set_level(logging.INFO)
    progress = Progress(logging.getLogger("recsys_tasks.progress_test"), MESSAGE, 100, interval_s=3600)
    for done in (10, 20, 50, 100, 100):
        progress.update(done)
    lines = progress_lines(caplog)
    assert len(lines) == 2, lines
    assert lines[0].startswith("did 10/100 rows (") and lines[1].startswith("did 100/100 rows (")
    assert lines[1].endswith(", 0s left)")


def test_progress_logs_again_once_its_interval_has_passed(caplog):
    caplog.set_level(logging.INFO)
    progress = Progress(logging.getLogger("recsys_tasks.progress_test"), MESSAGE, 100, interval_s=0.0)
    for done in (10, 20, 30):
        progress.update(done)
    assert [line.split(" (")[0] for line in progress_lines(caplog)] == ["did 10/100 rows", "did 20/100 rows",
                                                                        "did 30/100 rows"]


def test_memory_readings_are_this_process():
    before = rss_bytes()
    ballast = bytearray(64 * 1024 * 1024)  # 64 MiB, touched so that it is resident
    ballast[::4096] = b"x" * len(ballast[::4096])
    assert rss_bytes() > before + 32 * 1024 * 1024
    peak = peak_rss_bytes()
    assert peak is None or peak >= rss_bytes() - 4096 * 1024
    del ballast


@pytest.mark.integration  # device() imports TensorFlow
def test_stage_run_writes_the_summary_with_its_bookkeeping_and_nothing_when_the_body_fails(tmp_path):
    paths = RunPaths(tmp_path / "run")
    with stage_run("evaluate", paths) as summary:
        summary.update({"rows": 7, "seconds": 1.5})
    written = json.loads(paths.summary("evaluate").read_text())
    assert written == summary
    assert list(summary)[:3] == ["stage", "device", "seconds"] and list(summary)[-1] == "resources"
    assert summary["stage"] == "evaluate" and summary["rows"] == 7 and summary["seconds"] == 1.5  # the body's wins
    resources = summary["resources"]
    assert resources["rss_at_start_bytes"] > 0 and resources["cpu_seconds"] >= 0
    assert set(resources) == {"peak_rss_bytes", "rss_at_start_bytes", "peak_rss_is_stage_only", "pid", "cpu_seconds",
                              "loadavg"}

    shard = paths.root / "shard.json"
    with pytest.raises(ValueError, match="bad row"), stage_run("score", paths, target=shard, part="shard 0 of 1"):
        raise ValueError("bad row")
    assert not shard.exists()
