"""One configuration tree for the whole pipeline.

Defaults live here; a YAML file, ``RECSYS__SECTION__FIELD`` environment variables and DAG params
(dotted keys such as ``"scoring.top_k"``) override them, in that order. Unknown keys are errors.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "RECSYS__"
DATA_SOURCES = frozenset({"planted", "merlin", "parquet"})


class ConfigError(ValueError):
    """A configuration key or value that the pipeline cannot use."""


@dataclass(frozen=True)
class DataConfig:
    """Stage 1: raw impressions (``recsys_tasks/data/``: the three sources, the planted generator, the importer);
    their columns are the input contract of ``user_features``/``item_features`` (``docs/input-data.md``)."""

    source: str = "planted"
    """``planted`` (synthetic, learnable, known truth), ``merlin`` (the notebook's random clicks) or
    ``parquet`` (your own data: daily partitions under ``partition_root``, e.g. written by
    ``import-interactions``, or fixed ``train_path``/``valid_path``)."""
    num_rows: int = 200_000
    """Impressions generated (train + valid); ``planted`` and ``merlin`` only."""
    valid_fraction: float = 0.3
    """Share of rows held out for validation (the notebook uses 0.3)."""
    seed: int = 42
    """Seed for the generator, so a rerun of the same run reproduces its data."""
    num_users: int = 2000
    """``planted``: users in the population (those with no impression in train are not scored)."""
    num_items: int = 500
    """``planted``: items in the catalog."""
    click_rate: float = 0.1
    """``planted``: mean click probability of an impression (the intercept is calibrated to it)."""
    num_categories: int = 20
    """``planted``: item categories, the main axis of taste."""
    latent_dim: int = 16
    """``planted``: size of the hidden user and item taste vectors."""
    signal_strength: float = 10.0
    """``planted``: weight of taste affinity in the click logit (0 makes clicks ignore taste)."""
    popularity_exponent: float = 0.4
    """``planted``: item exposure follows rank ** -exponent (long tail)."""
    part_rows: int = 2_000_000
    """``planted``: impressions drawn and written per raw parquet part (memory follows this, not num_rows)."""
    train_path: str = ""
    """``parquet``: a raw training parquet file or a directory of them."""
    valid_path: str = ""
    """``parquet``: a raw validation parquet file or a directory of them."""
    partition_root: str = ""
    """``parquet``, daily partitions: a directory of ``dt=YYYY-MM-DD/`` sub-directories of parquet files.
    When set (instead of ``train_path``/``valid_path``) each run reads the ``window_days`` partitions
    ending at ``end_date`` (see :mod:`recsys_tasks.data.partitions`)."""
    end_date: str = ""
    """Daily partitions: the last day of the window, ``YYYY-MM-DD``. The DAG sets it to the run's logical
    date (a backfill date reads its own window); the command line must give it."""
    window_days: int = 7
    """Daily partitions: days in a run's window (the end date and the ``window_days - 1`` days before it)."""
    valid_days: int = 1
    """Daily partitions: the last ``valid_days`` days of the window are the validation split (a time-based
    split, as a model trained today is used on tomorrow's traffic); the earlier days are training data."""
    user_features: str = "aliccp"
    """The input contract's user features: comma-separated raw column names, each an integer-coded
    categorical feature of the user (``"age_group,gender,occupation"``); ``aliccp`` = Ali-CCP's 11 user
    columns (planted and ``merlin`` data); empty = the user id only (see ``docs/input-data.md``)."""
    item_features: str = "aliccp"
    """As ``user_features``, for the item (``aliccp`` = ``item_category,item_shop,item_brand``)."""


DASK_CLUSTERS = ("none", "local", "local_cuda")
RETRIEVAL_KERNELS = ("auto", "tiled", "tensorflow", "ivf", "hnsw")


@dataclass(frozen=True)
class TransformConfig:
    """Stage 2: where NVTabular runs."""

    dask_cluster: str = "none"
    """``none``: one process (Dask's default scheduler); ``local``: a ``distributed.LocalCluster`` of CPU
    worker processes; ``local_cuda``: a ``dask_cuda.LocalCUDACluster``, one worker per visible GPU."""
    dask_workers: int = 0
    """Workers of the local cluster; 0 lets Dask decide (one per GPU for ``local_cuda``, per core group
    for ``local``)."""
    part_size: str = "128MB"
    """In-memory size of the partitions NVTabular transforms and both fits' Merlin ``Loader`` read at a
    time (a Dask/Merlin size string): what bounds those stages' memory as the data grows."""


@dataclass(frozen=True)
class RetrievalConfig:
    """Stage 3: Two-Tower retrieval model (merlin-models ``TwoTowerModelV2``, in-batch negatives)."""

    tower_dims: tuple[int, ...] = (128, 64)
    """MLP layers of each tower; the last one is the embedding size."""
    optimizer: str = "lazy_adam"
    """``lazy_adam`` (Adam that updates only the embedding rows a batch looked up, see
    :func:`recsys_tasks.training.optimizers.lazy_adam_class`: the step cost does not grow with the number of users) or
    any Keras optimizer name (``adam`` rewrites every embedding row on every step)."""
    batch_size_rows: int = 512
    """Training clicks per gradient step (the in-batch negatives of each click are the batch's other items).
    Smaller than the notebook's 4096 so a daily job takes enough steps to learn (docs/decisions.md)."""
    epochs: int = 8
    """At most this many passes over the training clicks (see ``early_stopping_patience``)."""
    early_stopping_patience: int = 1
    """Stop after this many epochs without a lower validation loss (in-batch loss on the validation clicks)
    and keep the best epoch's weights; 0 trains exactly ``epochs`` epochs. See ``recsys_tasks/training/loader.py``:
    how many epochs help depends on the data (docs/decisions.md)."""
    eval_k: int = 10
    """Cut-off of the full-catalog recall/ndcg evaluation."""
    seed: int = 42
    learning_rate: float = 0.01
    """Step size (Keras' Adam default is 0.001, too slow for the few steps a daily job affords)."""
    popularity_correction: bool = True
    """Export the logQ correction of in-batch negatives as an extra embedding column (see retrieval.py)."""


@dataclass(frozen=True)
class RankingConfig:
    """Stage 4: DLRM ranking model (merlin-models ``DLRMModel``)."""

    embedding_dim: int = 64
    bottom_dims: tuple[int, ...] = (128, 64)
    top_dims: tuple[int, ...] = (128, 64, 32)
    optimizer: str = "lazy_adam"
    """As ``retrieval.optimizer``."""
    batch_size_rows: int = 1024
    """Training impressions per gradient step; smaller than the notebook's 16k so a daily job takes enough
    steps to learn (docs/decisions.md)."""
    epochs: int = 3
    """At most this many passes over the training impressions (see ``early_stopping_patience``)."""
    early_stopping_patience: int = 1
    """As ``retrieval.early_stopping_patience``, on the validation log loss."""
    seed: int = 42
    learning_rate: float = 0.001
    """Adam's step size."""


@dataclass(frozen=True)
class ScoringConfig:
    """Stage 5: retrieve K candidates per user, drop seen items, rank, keep N."""

    top_k: int = 100
    """Candidates retrieved per user by dot product over the whole catalog."""
    top_n: int = 20
    """Length of each published list."""
    user_chunk_size: int = 4096
    """Users retrieved and ranked per step (bounds memory: on a GPU a chunk x catalog score matrix)."""
    rank_batch_rows: int = 16_384
    """(user, item) pairs per TensorFlow DLRM call: the whole model, or the split's per-pair step on a GPU
    (on a CPU that step is the numba kernel of :mod:`recsys_tasks.scoring.kernels.dlrm_cpu`, 32 users per
    thread task)."""
    retrieval_kernel: str = "auto"
    """Exact: ``tiled`` (CPU: BLAS on cache-sized tiles folded into a running top-k,
    :mod:`recsys_tasks.scoring.kernels.topk`)
    or ``tensorflow`` (one matrix product per chunk, seen items masked, ``tf.math.top_k``: fastest on a
    GPU); same lists either way. Approximate (FAISS, :mod:`recsys_tasks.scoring.kernels.ann`): ``ivf`` or ``hnsw``.
    ``auto``: ``tensorflow`` when TensorFlow sees a GPU; on a CPU ``tiled`` below ``ann_min_items``
    items and ``ann_kernel`` from there on."""
    ann_kernel: str = "ivf"
    """The approximate kernel ``auto`` uses on a CPU for catalogs of ``ann_min_items`` or more. ``ivf``
    because its index is reproducible (seeded k-means: a rerun publishes the same lists); HNSW's
    multi-threaded build is not, although it is faster (docs/decisions.md)."""
    ann_min_items: int = 50_000
    """Catalog size from which ``auto`` retrieves approximately on a CPU. Below it exact retrieval, which
    loses nothing, is kept where an index would gain little (the measurement: docs/decisions.md)."""
    ann_threads: int = 0
    """FAISS OpenMP threads for building and searching the index; 0: the cores this process may use."""
    ivf_lists: int = 0
    """``ivf``: k-means cells; 0 = 4 x sqrt(items)."""
    ivf_probe: int = 32
    """``ivf``: cells searched per query (recall vs speed): more cells, higher recall, slower queries. Take
    it from the bench's sweep on your own trained embeddings (docs/decisions.md, docs/performance.md)."""
    hnsw_m: int = 32
    """``hnsw``: graph neighbours per node."""
    hnsw_ef_construction: int = 40
    """``hnsw``: candidate list size while building (build time vs graph quality)."""
    hnsw_ef_search: int = 128
    """``hnsw``: candidate list size per query (recall vs speed; at least the number fetched)."""
    factored_ranking: bool = True
    """Rank with the DLRM split into per-user, per-item and cross parts (:mod:`recsys_tasks.scoring.ranker`;
    same scores up to float rounding); ``false``, or a model of another shape, runs the whole model per pair."""
    exclude: str = "clicked"
    """Items a user's list may not hold, in scoring, evaluation and the popularity baseline alike: ``clicked``
    (their training clicks: the default, for impression logs, where an item shown and not clicked may
    still be clicked later) or ``interacted`` (every item they were shown in training: use it for
    rating-derived data, where every rating is an impression and a rated movie is not recommended again)."""
    blend: str = "fit"
    """Final order of each user's K candidates (:mod:`recsys_tasks.scoring.blend`): ``fit`` (default) picks, on a
    sample of validation users, the best by recall@N of the retrieval order, the DLRM order and blends of the
    retrieval score, DLRM logit and log popularity, so the published order never loses to retrieval order on
    validation; ``retrieval`` or ``dlrm`` force that order without a fit."""
    blend_sample_users: int = 5000
    """Validation users (known from training, seeded sample) the blend is fitted on; 0 means all."""
    blend_seed: int = 7
    """Seed of that sample."""
    num_shards: int = 1
    """Users are split into this many contiguous shards, scored independently (one mapped Airflow task
    each, so several GPU workers score in parallel) and written as one recommendations part per shard."""


@dataclass(frozen=True)
class StoreConfig:
    """Stage 6: RedisJSON documents."""

    key_prefix: str = "USER:"
    """Documents live at ``<key_prefix><raw user id>``, as in the notebook."""
    manifest_key: str = "RECSYS:MANIFEST"
    """Written after the last document of a run: run id, user count, time."""
    ttl_s: int = 3 * 24 * 3600
    """Every document expires after this many seconds unless a later run rewrites it."""
    pipeline_chunk_keys: int = 2000
    """Documents sent per pipelined round trip."""
    force: bool = False
    """Publish even when the manifest names a newer logical date: the rollback / forced-backfill switch."""
    lock_key: str = "RECSYS:LOCK"
    """One load at a time: ``SET NX PX`` with a per-load token, renewed while the load runs."""
    lock_ttl_s: int = 120
    """A lock that is not renewed (its worker was killed) expires after this many seconds."""
    lock_wait_s: float = 60.0
    """How long a load waits for another load's lock before failing (then Airflow retries)."""
    retry_attempts: int = 5
    """Tries per Redis command or pipelined chunk on connection errors and timeouts."""
    retry_backoff_s: float = 0.5
    """First wait between tries; doubles on each failure up to ``retry_backoff_max_s``."""
    retry_backoff_max_s: float = 8.0
    socket_timeout_s: float = 30.0
    """Socket connect/read timeout for clients that do not set one (a hung Redis becomes a retry)."""
    memory_sample_keys: int = 100
    """Documents sampled with ``MEMORY USAGE`` for the bytes-per-user figure of the load summary."""
    fallback_key: str = "RECSYS:FALLBACK"
    """The popularity list for users with no document (cold or unknown users); ``fetch`` returns it
    marked ``"fallback": true``."""
    capacity_check: bool = True
    """Before the first write, estimate the memory this run adds on each Redis (cluster) node and refuse,
    writing nothing, when a node lacks the room (see ``recsys_tasks/store/capacity.py``)."""
    fenced_writes: bool = True
    """Write each document with a server-side script that never replaces a document of a newer logical date
    (unless ``force``): a loader that stalled past its lock cannot overwrite a newer run (docs/store-durability.md)."""
    min_replicas_acked: int = -1
    """After the write phase each master must confirm (``WAIT``) that this many replicas hold its writes;
    -1: one where the master has a connected replica, none on a lone node; 0: do not wait."""
    replica_ack_timeout_s: float = 10.0
    """How long ``WAIT`` waits for the replicas (bounded by ``socket_timeout_s``)."""
    verify_writes: bool = True
    """Before the manifest, read every key of the run back (its ``run_id``) and write again what is missing."""


@dataclass(frozen=True)
class EvaluateConfig:
    """Stage ``evaluate``: offline metrics of the run, written to ``report.json``."""

    cutoffs: tuple[int, ...] = (10, 20)
    """Retrieval cut-offs k of recall@k / ndcg@k; ``scoring.top_k`` is always added."""
    plots: bool = True
    """Write the PNG plots and ``report.md`` next to ``report.json``."""
    sample_users: int = 50_000
    """Validation users (known from training) the metrics are computed on, a seeded sample; every such user
    when there are fewer, and 0 means all. Bounds the stage's time and memory; each metric reports its 95%
    interval over the sample."""
    sample_seed: int = 42
    """Seed of that sample (the same users are evaluated on every rerun of a run)."""


@dataclass(frozen=True)
class QualityConfig:
    """The gate ``load_redis`` runs before writing anything (see ``recsys_tasks/evaluation/gate.py``)."""

    min_recall_lift: float = 1.2
    """Retrieval recall@10 must be at least this multiple of the popularity baseline's."""
    min_ranking_auc: float = 0.6
    """Validation AUC of the ranking model must be at least this."""
    min_user_coverage: float = 0.99
    """Share of scored users that must have a full (top-N) list."""
    force_publish: bool = False
    """Operator override: publish even when checks fail (logged loudly, recorded in the summary)."""


@dataclass(frozen=True)
class RetentionConfig:
    """Run directories kept on disk (the ``prune_runs`` task at the end of the DAG)."""

    keep_runs: int = 7
    """The newest run directories (by the time each run started) that are kept; older ones are deleted,
    except the run the Redis manifest names and runs Airflow still reports as running. 0 keeps all."""


@dataclass(frozen=True)
class Config:
    """The whole pipeline's settings."""

    artifact_root: str = "artifacts"
    """Each run writes under ``<artifact_root>/<dag_id>/<run_id>/``."""
    data: DataConfig = field(default_factory=DataConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: Mapping[str, Any], *, origin: str = "overrides") -> Config:
        """Return a copy with dotted keys (``"scoring.top_k"``) or nested dicts applied."""
        flat = _flatten(overrides)
        sections: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        for key, value in flat.items():
            section, _, name = key.rpartition(".")
            target = _field_type(self, section, name, key, origin)
            value = _coerce(value, target, key, origin)
            if section:
                sections.setdefault(section, {})[name] = value
            else:
                top[name] = value
        replaced = {s: dataclasses.replace(getattr(self, s), **v) for s, v in sections.items()}
        return dataclasses.replace(self, **top, **replaced)


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Defaults, then the YAML file, then ``RECSYS__*`` environment variables, then ``overrides``."""
    config = Config()
    if path is not None:
        config = config.with_overrides(_read_yaml(Path(path)), origin=str(path))
    env = os.environ if environ is None else environ
    from_env = {
        k[len(ENV_PREFIX):].lower().replace("__", "."): v
        for k, v in env.items()
        if k.startswith(ENV_PREFIX)
    }
    if from_env:
        config = config.with_overrides(from_env, origin="environment")
    if overrides:
        config = config.with_overrides(overrides, origin="params")
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with path.open() as fh:
        loaded = yaml.safe_load(fh) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(loaded).__name__}")
    return loaded


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _field_type(config: Config, section: str, name: str, key: str, origin: str) -> type:
    owner: Any = config
    if section:
        if section not in {f.name for f in dataclasses.fields(Config)} or not dataclasses.is_dataclass(
            getattr(config, section)
        ):
            raise ConfigError(f"{origin}: unknown config section {section!r} in key {key!r}")
        owner = getattr(config, section)
    fields = {f.name: f for f in dataclasses.fields(owner)}
    if name not in fields or dataclasses.is_dataclass(getattr(owner, name)):
        known = ", ".join(sorted(f for f in fields if not dataclasses.is_dataclass(getattr(owner, f))))
        raise ConfigError(f"{origin}: unknown config key {key!r} (known here: {known})")
    return type(getattr(owner, name))


def _coerce(value: Any, target: type, key: str, origin: str) -> Any:
    """Turn YAML/env/param values into the field's type, refusing what does not fit."""
    try:
        if target is tuple:
            if isinstance(value, str):
                value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
            return tuple(int(v) for v in value)
        if target is bool:
            if isinstance(value, str):
                word = value.strip().lower()
                if word not in {"1", "true", "yes", "on", "0", "false", "no", "off", ""}:
                    raise ValueError("not a boolean (true/false)")
                return word in {"1", "true", "yes", "on"}
            return bool(value)
        if target is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("not a whole number")
            if isinstance(value, bool):
                raise ValueError("a boolean is not a number")
            return int(value)
        return target(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{origin}: config key {key!r} expects {target.__name__}, got {value!r} ({exc})"
        ) from None


def _is_day(value: str) -> bool:
    """Empty, or a calendar day written ``YYYY-MM-DD``."""
    import datetime

    if not value:
        return True
    try:
        return datetime.date.fromisoformat(value).isoformat() == value
    except ValueError:
        return False


def _validate(config: Config) -> None:
    checks = [
        (config.data.num_rows > 0, f"data.num_rows must be > 0, got {config.data.num_rows}"),
        (
            0.0 < config.data.valid_fraction < 1.0,
            f"data.valid_fraction must be in (0, 1), got {config.data.valid_fraction}",
        ),
        (
            config.data.source in DATA_SOURCES,
            f"data.source must be one of {sorted(DATA_SOURCES)}, got {config.data.source!r}",
        ),
        (config.data.part_rows > 0, f"data.part_rows must be > 0, got {config.data.part_rows}"),
        (config.data.num_users > 0, f"data.num_users must be > 0, got {config.data.num_users}"),
        (config.data.num_items > 0, f"data.num_items must be > 0, got {config.data.num_items}"),
        (0.0 < config.data.click_rate < 1.0, f"data.click_rate must be in (0, 1), got {config.data.click_rate}"),
        (config.data.num_categories > 0, f"data.num_categories must be > 0, got {config.data.num_categories}"),
        (config.data.latent_dim > 0, f"data.latent_dim must be > 0, got {config.data.latent_dim}"),
        (config.data.signal_strength >= 0, "data.signal_strength must be >= 0"),
        (config.data.popularity_exponent >= 0, "data.popularity_exponent must be >= 0"),
        (config.data.window_days >= 2, f"data.window_days must be >= 2, got {config.data.window_days}"),
        (
            1 <= config.data.valid_days < config.data.window_days,
            f"data.valid_days must be >= 1 and < data.window_days ({config.data.window_days}), "
            f"got {config.data.valid_days}",
        ),
        (
            not (config.data.partition_root and (config.data.train_path or config.data.valid_path)),
            "data.partition_root and data.train_path/data.valid_path are two ways to name parquet input; set one",
        ),
        (
            not config.data.partition_root or config.data.source == "parquet",
            f"data.partition_root is set but data.source is {config.data.source!r}; set data.source=parquet",
        ),
        (_is_day(config.data.end_date), f"data.end_date must be YYYY-MM-DD, got {config.data.end_date!r}"),
        (config.retention.keep_runs >= 0, f"retention.keep_runs must be >= 0, got {config.retention.keep_runs}"),
        (
            all(k >= 1 for k in config.evaluate.cutoffs),
            f"evaluate.cutoffs must all be >= 1, got {config.evaluate.cutoffs}",
        ),
        (config.evaluate.sample_users >= 0, f"evaluate.sample_users must be >= 0, got {config.evaluate.sample_users}"),
        (config.quality.min_recall_lift >= 0, "quality.min_recall_lift must be >= 0"),
        (0.0 <= config.quality.min_ranking_auc <= 1.0, "quality.min_ranking_auc must be in [0, 1]"),
        (0.0 <= config.quality.min_user_coverage <= 1.0, "quality.min_user_coverage must be in [0, 1]"),
        (config.retrieval.epochs >= 1, f"retrieval.epochs must be >= 1, got {config.retrieval.epochs}"),
        (config.ranking.epochs >= 1, f"ranking.epochs must be >= 1, got {config.ranking.epochs}"),
        (config.retrieval.batch_size_rows > 0, "retrieval.batch_size_rows must be > 0"),
        (config.ranking.batch_size_rows > 0, "ranking.batch_size_rows must be > 0"),
        (len(config.retrieval.tower_dims) >= 1, "retrieval.tower_dims needs at least one layer"),
        (config.scoring.top_n >= 1, f"scoring.top_n must be >= 1, got {config.scoring.top_n}"),
        (
            config.scoring.top_k >= config.scoring.top_n,
            f"scoring.top_k ({config.scoring.top_k}) must be >= scoring.top_n ({config.scoring.top_n})",
        ),
        (config.scoring.user_chunk_size > 0, "scoring.user_chunk_size must be > 0"),
        (config.scoring.rank_batch_rows > 0, "scoring.rank_batch_rows must be > 0"),
        (
            config.scoring.retrieval_kernel in RETRIEVAL_KERNELS,
            f"scoring.retrieval_kernel must be one of {', '.join(RETRIEVAL_KERNELS)}; "
            f"got {config.scoring.retrieval_kernel!r}",
        ),
        (config.scoring.num_shards >= 1, f"scoring.num_shards must be >= 1, got {config.scoring.num_shards}"),
        (
            config.scoring.ann_kernel in ("ivf", "hnsw"),
            f"scoring.ann_kernel must be ivf or hnsw, got {config.scoring.ann_kernel!r}",
        ),
        (config.scoring.ann_min_items >= 0, "scoring.ann_min_items must be >= 0"),
        (config.scoring.ann_threads >= 0, "scoring.ann_threads must be >= 0"),
        (config.scoring.ivf_lists >= 0, "scoring.ivf_lists must be >= 0"),
        (config.scoring.ivf_probe >= 1, "scoring.ivf_probe must be >= 1"),
        (config.scoring.hnsw_m >= 2, "scoring.hnsw_m must be >= 2"),
        (config.scoring.blend in ("fit", "retrieval", "dlrm"),
         f"scoring.blend must be fit, retrieval or dlrm; got {config.scoring.blend!r}"),
        (config.scoring.blend_sample_users >= 0, "scoring.blend_sample_users must be >= 0"),
        (config.scoring.exclude in ("clicked", "interacted"),
         f"scoring.exclude must be clicked or interacted; got {config.scoring.exclude!r}"),
        (config.scoring.hnsw_ef_construction >= 1, "scoring.hnsw_ef_construction must be >= 1"),
        (config.scoring.hnsw_ef_search >= 1, "scoring.hnsw_ef_search must be >= 1"),
        (
            config.transform.dask_cluster in DASK_CLUSTERS,
            f"transform.dask_cluster must be one of {', '.join(DASK_CLUSTERS)}; got {config.transform.dask_cluster!r}",
        ),
        (config.transform.dask_workers >= 0, "transform.dask_workers must be >= 0"),
        (bool(config.transform.part_size.strip()), "transform.part_size must not be empty (e.g. 128MB)"),
        (config.store.ttl_s > 0, f"store.ttl_s must be > 0, got {config.store.ttl_s}"),
        (config.store.pipeline_chunk_keys > 0, "store.pipeline_chunk_keys must be > 0"),
        (bool(config.store.key_prefix), "store.key_prefix must not be empty"),
        (config.store.lock_ttl_s > 0, f"store.lock_ttl_s must be > 0, got {config.store.lock_ttl_s}"),
        (config.store.lock_wait_s >= 0, f"store.lock_wait_s must be >= 0, got {config.store.lock_wait_s}"),
        (config.store.retry_attempts >= 1, f"store.retry_attempts must be >= 1, got {config.store.retry_attempts}"),
        (
            0 <= config.store.retry_backoff_s <= config.store.retry_backoff_max_s,
            "store.retry_backoff_s must be >= 0 and <= store.retry_backoff_max_s",
        ),
        (config.store.socket_timeout_s > 0, f"store.socket_timeout_s must be > 0, got {config.store.socket_timeout_s}"),
        (config.store.memory_sample_keys >= 0, "store.memory_sample_keys must be >= 0"),
        (config.store.min_replicas_acked >= -1, "store.min_replicas_acked must be >= -1 (-1: automatic)"),
        (config.store.replica_ack_timeout_s > 0, "store.replica_ack_timeout_s must be > 0"),
        (
            len({config.store.manifest_key, config.store.lock_key}) == 2
            and not config.store.manifest_key.startswith(config.store.key_prefix)
            and not config.store.lock_key.startswith(config.store.key_prefix),
            "store.manifest_key and store.lock_key must differ and lie outside store.key_prefix",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def parse_set_pairs(pairs: Sequence[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` arguments as the overrides :func:`load_config` takes (the last layer)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        overrides[key.strip()] = value.strip()
    return overrides
