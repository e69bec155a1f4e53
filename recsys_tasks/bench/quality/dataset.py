"""MovieLens-100K, fetched from the ``recbole`` 1.2.1 wheel on PyPI into a cache outside git (its licence
forbids redistribution, so the data is never committed): ``pip download``, then three files unzipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..common import BenchError

RECBOLE_WHEEL = "recbole==1.2.1"
MEMBER_DIR = "recbole/dataset_example/ml-100k/"
HEADERS = {
    "ml-100k.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float",
    "ml-100k.user": "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token",
    "ml-100k.item": "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq",
}
CACHE_ENV = "RECSYS_DATA_CACHE"
DOWNLOAD_TIMEOUT_S = 600


def default_cache() -> Path:
    """``$RECSYS_DATA_CACHE/ml-100k``, else ``~/.cache/recsys_tasks/ml-100k``."""
    root = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "recsys_tasks")
    return Path(root) / "ml-100k"


def check_headers(directory: Path) -> None:
    """Each file's first line must be RecBole's atomic header we map columns from."""
    for name, header in HEADERS.items():
        with open(directory / name, encoding="utf-8", errors="replace") as handle:
            first = handle.readline().rstrip("\n")
        if first != header:
            raise BenchError(f"{directory / name}: header {first!r}, expected {header!r}; delete the cache and refetch")


def fetch_ml100k(directory: Path | None = None) -> Path:
    """The directory holding ``ml-100k.{inter,user,item}``, downloading them once (not RecBole itself, nor torch)."""
    directory = directory or default_cache()
    if all((directory / name).is_file() for name in HEADERS):
        check_headers(directory)
        return directory
    with tempfile.TemporaryDirectory(prefix="ml100k-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", RECBOLE_WHEEL, "-d", tmp]
        try:
            subprocess.run(command, check=True, timeout=DOWNLOAD_TIMEOUT_S, capture_output=True, text=True)
        except subprocess.CalledProcessError as exc:
            raise BenchError(f"`{' '.join(command)}` failed: {exc.stderr.strip()[-800:]}") from exc
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"`{' '.join(command)}` did not finish within {DOWNLOAD_TIMEOUT_S}s") from exc
        wheels = sorted(Path(tmp).glob("recbole-*.whl"))
        if not wheels:
            raise BenchError(f"pip download of {RECBOLE_WHEEL} left no wheel in {tmp}")
        staging = directory.parent / f".{directory.name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            for name in HEADERS:
                try:
                    data = wheel.read(MEMBER_DIR + name)
                except KeyError as exc:
                    raise BenchError(f"{wheels[0].name} holds no {MEMBER_DIR + name}") from exc
                (staging / name).write_bytes(data)
        check_headers(staging)
        shutil.rmtree(directory, ignore_errors=True)
        staging.rename(directory)
    return directory
