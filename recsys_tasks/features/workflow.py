"""Stage 2: the notebook's NVTabular workflow, fitted on train and applied to train and valid.

Outputs: ``processed/{train,valid}`` (all impressions, for ranking), ``processed/retrieval/{train,valid}``
(clicks only, for the Two-Tower model), ``processed/categories`` (Categorify's mappings) and the fitted
workflow in ``processed/workflow`` so the same encoding can be reapplied later. Runs in one process by
default, or on a local Dask cluster (CPU or one worker per GPU) when ``transform.dask_cluster`` says so.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, TransformConfig
from ..data.contract import ALICCP_CONTRACT, ALICCP_ITEM_FEATURES, ALICCP_USER_FEATURES, InputContract, input_contract
from ..paths import RunPaths, require
from ..runtime import InputDataError, get_logger, parquet_rows, stage

log = get_logger("transform")

# Ali-CCP's features (the planted and merlin sources); a run's own come from its input contract.
USER_FEATURES = list(ALICCP_USER_FEATURES)
ITEM_FEATURES = list(ALICCP_ITEM_FEATURES)
RAW_ID_COLUMNS = ["user_id_raw", "item_id_raw"]
TARGET = "click"


def check_raw_parquet(directory: Path, contract: InputContract = ALICCP_CONTRACT) -> list[Path]:
    """Check every raw parquet file before NVTabular sees it (see ``validation.check_raw_parquet``)."""
    from ..validation import check_raw_parquet as check

    # validation's check is for integer columns; generate_data already checked the values of the continuous
    # and multi-valued ones.
    integers = {c: k for c, k in contract.raw_columns.items() if k == "i"}
    files = check(directory, integers, produced_by="generate_data")
    _check_feature_types(files, {c: k for c, k in contract.raw_columns.items() if k in ("f", "l")})
    return files


def _check_feature_types(files: list[Path], columns: dict[str, str]) -> None:
    """Continuous columns (``f``) must be numbers, multi-valued ones (``l``) lists of integers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = {"f": "continuous", "l": "multi-valued"}
    for file in files if columns else []:
        schema = pq.read_schema(file)
        for column, expected in columns.items():
            if column not in schema.names:
                raise InputDataError(f"{file}: missing the declared {names[expected]} column {column!r}")
            kind = schema.field(column).type
            if expected == "f" and not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
                raise InputDataError(f"{file}: column {column!r} has type {kind}, expected a number")
            if expected == "l" and not (pa.types.is_list(kind) and pa.types.is_integer(kind.value_type)):
                raise InputDataError(f"{file}: column {column!r} has type {kind}, expected a list of integers")


def build_workflow(categories_dir: Path, contract: InputContract = ALICCP_CONTRACT) -> Any:
    """The notebook's feature graph: encoded ids and the declared categorical, continuous and multi-valued
    features (Merlin's USER/ITEM tags), raw ids kept, target tagged, nulls dropped."""
    import nvtabular as nvt
    from merlin.schema.tags import Tags
    from nvtabular import ops

    cat = dict(dtype="int32", out_path=str(categories_dir))
    user_id = ["user_id"] >> ops.Categorify(**cat) >> ops.TagAsUserID()
    item_id = ["item_id"] >> ops.Categorify(**cat) >> ops.TagAsItemID()
    features = []
    if contract.item_features:
        features.append(list(contract.item_features) >> ops.Categorify(**cat) >> ops.TagAsItemFeatures())
    if contract.user_features:
        features.append(list(contract.user_features) >> ops.Categorify(**cat) >> ops.TagAsUserFeatures())
    # Multi-valued features: Categorify codes every value of a row's list (the column stays a ragged list,
    # CATEGORICAL and LIST in the schema); both models average a row's value embeddings.
    if contract.item_multi:
        features.append(list(contract.item_multi) >> ops.Categorify(**cat) >> ops.AddTags([Tags.LIST])
                        >> ops.TagAsItemFeatures())
    if contract.user_multi:
        features.append(list(contract.user_multi) >> ops.Categorify(**cat) >> ops.AddTags([Tags.LIST])
                        >> ops.TagAsUserFeatures())
    # Continuous features: float32, standardised with the training split's mean and deviation.
    if contract.item_continuous:
        features.append(list(contract.item_continuous) >> ops.LambdaOp(_as_float32) >> ops.Normalize()
                        >> ops.TagAsItemFeatures())
    if contract.user_continuous:
        features.append(list(contract.user_continuous) >> ops.LambdaOp(_as_float32) >> ops.Normalize()
                        >> ops.TagAsUserFeatures())
    user_id_raw = (
        ["user_id"] >> ops.Rename(postfix="_raw") >> ops.LambdaOp(_as_int64) >> ops.TagAsUserFeatures()
    )
    item_id_raw = (
        ["item_id"] >> ops.Rename(postfix="_raw") >> ops.LambdaOp(_as_int64) >> ops.TagAsItemFeatures()
    )
    targets = [TARGET] >> ops.AddMetadata(tags=[Tags.BINARY_CLASSIFICATION, "target"])
    outputs = user_id + item_id
    for feature in features:
        outputs = outputs + feature
    outputs = outputs + user_id_raw + item_id_raw + targets
    return nvt.Workflow(outputs >> ops.Dropna())


def _as_int64(column: Any) -> Any:
    # The notebook casts raw ids to int32; int64 keeps real-world ids (which exceed 2**31) intact.
    return column.astype("int64")


def _as_float32(column: Any) -> Any:
    return column.astype("float32")


def _clicked_only(frame: Any) -> Any:
    return frame[frame[TARGET] == 1]


@contextlib.contextmanager
def dask_cluster(settings: TransformConfig) -> Iterator[dict[str, Any]]:
    """Run the enclosed NVTabular work on the configured Dask cluster; yield what was used (for the summary).

    ``none`` keeps Dask's default single-process scheduler. ``local`` starts a ``distributed.LocalCluster``
    of CPU worker processes, ``local_cuda`` a ``dask_cuda.LocalCUDACluster`` with one worker per visible
    GPU (``CUDA_VISIBLE_DEVICES`` picks them); both are created through Merlin's ``Distributed``, which
    makes them the client NVTabular uses, and both are shut down on exit, also after an error.

    Inside a daemonic process (a task of a Celery prefork worker, as on the GPU-queue workers) no worker
    process can be started: ``local`` then runs its workers as threads of the task's process, and
    ``local_cuda`` (which needs one process per GPU) is refused with a :class:`ConfigError` instead of
    hanging the task.
    """
    if settings.dask_cluster == "none":
        yield {"dask_cluster": "none", "dask_workers": 0}
        return
    daemonic = in_daemonic_process()
    if daemonic and settings.dask_cluster == "local_cuda":
        raise ConfigError(
            "transform.dask_cluster=local_cuda starts one worker process per GPU, but this task runs in a "
            "daemonic process (a Celery prefork worker), which may not have children. Set "
            "RECSYS__TRANSFORM__DASK_CLUSTER=none (RECSYS_DASK_CLUSTER in .env) for the Celery workers; "
            "use local_cuda with `python -m recsys_tasks run transform` or `airflow dags test`."
        )
    from merlin.core.utils import Distributed

    options: dict[str, Any] = {"n_workers": settings.dask_workers} if settings.dask_workers else {}
    if settings.dask_cluster == "local":
        options.setdefault("threads_per_worker", 1)
        if daemonic:
            log.warning("transform.dask_cluster=local inside a daemonic process (Celery worker): the Dask "
                        "workers run as threads of this process, not as worker processes")
            options["processes"] = False
    cluster_type = "cuda" if settings.dask_cluster == "local_cuda" else "cpu"
    dist = Distributed(cluster_type=cluster_type, force_new=True, **options)
    cluster = dist.cluster
    try:
        # Closing the client does not stop a cluster handed to it: stop the workers too.
        with dist:
            workers = len(dist.client.scheduler_info()["workers"])
            log.info("transform on a %s Dask cluster with %d worker(s): %s", settings.dask_cluster, workers,
                     dist.client.dashboard_link)
            yield {"dask_cluster": settings.dask_cluster, "dask_workers": workers}
    finally:
        cluster.close()


def in_daemonic_process() -> bool:
    """True in a process that may not start child processes (Celery's prefork pool children)."""
    if multiprocessing.current_process().daemon:
        return True
    billiard = sys.modules.get("billiard")  # Celery's fork of multiprocessing keeps its own flag
    return bool(billiard is not None and billiard.current_process().daemon)


@stage("transform")
def transform(config: Config, paths: RunPaths) -> dict[str, Any]:
    contract = input_contract(config.data)
    train_files = check_raw_parquet(require(paths.raw_train, "generate_data"), contract)
    valid_files = check_raw_parquet(require(paths.raw_valid, "generate_data"), contract)
    with dask_cluster(config.transform) as cluster:
        summary = _transform(paths, train_files, valid_files, config.transform.part_size, contract)
    return {**summary, **cluster, "contract": contract.describe()}


def _transform(paths: RunPaths, train_files: list[Path], valid_files: list[Path], part_size: str,
               contract: InputContract) -> dict[str, Any]:
    import nvtabular as nvt
    from merlin.io import Dataset
    from nvtabular import ops

    for directory in (paths.categories, paths.workflow, paths.train, paths.valid):
        paths.fresh(directory)
    for directory in (paths.retrieval_train, paths.retrieval_valid):
        paths.fresh(directory)

    # Partitions of part_size are read, transformed and written one after another (or by the cluster's
    # workers): memory follows the partition size, not the data size.
    raw_train = Dataset([str(f) for f in train_files], engine="parquet", part_size=part_size)
    raw_valid = Dataset([str(f) for f in valid_files], engine="parquet", part_size=part_size)
    # The workflow selects the contract's columns: anything else (timestamp, rating) stays out of the models.
    workflow = build_workflow(paths.categories, contract)
    workflow.fit(raw_train)
    workflow.transform(raw_train).to_parquet(str(paths.train), out_files_per_proc=1)
    workflow.transform(raw_valid).to_parquet(str(paths.valid), out_files_per_proc=1)
    # Workflow.save refuses a non-empty directory.
    paths.workflow.rmdir()
    workflow.save(str(paths.workflow))

    processed_train = Dataset(str(paths.train / "*.parquet"), engine="parquet", part_size=part_size)
    processed_valid = Dataset(str(paths.valid / "*.parquet"), engine="parquet", part_size=part_size)
    clicks = nvt.Workflow(processed_train.schema.column_names >> ops.Filter(f=_clicked_only))
    clicks.fit(processed_train)
    clicks.transform(processed_train).to_parquet(str(paths.retrieval_train), out_files_per_proc=1)
    clicks.transform(processed_valid).to_parquet(str(paths.retrieval_valid), out_files_per_proc=1)

    rows = {
        name: parquet_rows(directory)
        for name, directory in (
            ("train", paths.train),
            ("valid", paths.valid),
            ("retrieval_train", paths.retrieval_train),
            ("retrieval_valid", paths.retrieval_valid),
        )
    }
    if rows["train"] == 0 or rows["retrieval_train"] == 0:
        raise InputDataError(
            f"{paths.raw_train}: after dropping nulls the training data has {rows['train']} rows and "
            f"{rows['retrieval_train']} clicks; both must be > 0"
        )
    cardinalities = {
        col.name: int(col.int_domain.max) + 1
        for col in processed_train.schema
        if col.int_domain is not None and col.name not in RAW_ID_COLUMNS and col.name != TARGET
    }
    return {
        "rows": rows,
        "cardinalities": cardinalities,
        "workflow_dir": str(paths.workflow),
        "train_dir": str(paths.train),
        "retrieval_train_dir": str(paths.retrieval_train),
    }
