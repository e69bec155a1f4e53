"""The sections of the pipeline's configuration: one frozen pydantic dataclass per stage, each field with its
default, its constraint and its meaning. :mod:`recsys_tasks.config` assembles and loads them."""

from __future__ import annotations

import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    StringConstraints,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_settings import NoDecode

_SECTION = ConfigDict(extra="forbid", use_attribute_docstrings=True, coerce_numbers_to_str=True)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _split_ints(value: Any) -> Any:
    """``"64,32"`` or ``"[64, 32]"`` (an env variable, a ``--set`` value) as the list pydantic validates."""
    if isinstance(value, str):
        return [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
    return value


def _day(value: str) -> str:
    """Empty, or a calendar day written ``YYYY-MM-DD``."""
    try:
        _check(not value or datetime.date.fromisoformat(value).isoformat() == value, "")
    except ValueError:
        raise ValueError("must be YYYY-MM-DD") from None
    return value


Ints = Annotated[tuple[int, ...], BeforeValidator(_split_ints), NoDecode]
PositiveFloats = Annotated[tuple[Annotated[float, Field(gt=0)], ...], BeforeValidator(_split_ints), NoDecode]
Day = Annotated[str, BeforeValidator(lambda v: v.isoformat() if isinstance(v, datetime.date) else v),
                AfterValidator(_day)]


@dataclass(frozen=True, config=_SECTION)
class DataConfig:
    """Stage 1: raw impressions (``recsys_tasks/data/``: the three sources, the planted generator, the importer);
    their columns are the input contract of ``user_features``/``item_features`` (``docs/input-data.md``)."""

    source: Literal["planted", "merlin", "parquet"] = "planted"
    """``planted`` (synthetic, learnable, known truth), ``merlin`` (the notebook's random clicks) or
    ``parquet`` (your own data: daily partitions under ``partition_root``, e.g. written by
    ``import-interactions``, or fixed ``train_path``/``valid_path``)."""
    num_rows: PositiveInt = 200_000
    """Impressions generated (train + valid); ``planted`` and ``merlin`` only."""
    valid_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.3
    """Share of rows held out for validation (the notebook uses 0.3)."""
    seed: int = 42
    """Seed for the generator, so a rerun of the same run reproduces its data."""
    num_users: PositiveInt = 2000
    """``planted``: users in the population (those with no impression in train are not scored)."""
    num_items: PositiveInt = 500
    """``planted``: items in the catalog."""
    click_rate: Annotated[float, Field(gt=0, lt=1)] = 0.1
    """``planted``: mean click probability of an impression (the intercept is calibrated to it)."""
    num_categories: PositiveInt = 20
    """``planted``: item categories, the main axis of taste."""
    latent_dim: PositiveInt = 16
    """``planted``: size of the hidden user and item taste vectors."""
    signal_strength: NonNegativeFloat = 10.0
    """``planted``: weight of taste affinity in the click logit (0 makes clicks ignore taste)."""
    popularity_exponent: NonNegativeFloat = 0.4
    """``planted``: item exposure follows rank ** -exponent (long tail)."""
    part_rows: PositiveInt = 2_000_000
    """``planted``: impressions drawn and written per raw parquet part (memory follows this, not num_rows)."""
    train_path: str = ""
    """``parquet``: a raw training parquet file or a directory of them."""
    valid_path: str = ""
    """``parquet``: a raw validation parquet file or a directory of them."""
    partition_root: str = ""
    """``parquet``, daily partitions: a directory of ``dt=YYYY-MM-DD/`` sub-directories of parquet files.
    When set (instead of ``train_path``/``valid_path``) each run reads the ``window_days`` partitions
    ending at ``end_date`` (see :mod:`recsys_tasks.data.partitions`)."""
    end_date: Day = ""
    """Daily partitions: the last day of the window, ``YYYY-MM-DD``. The DAG sets it to the run's logical
    date (a backfill date reads its own window); the command line must give it."""
    window_days: Annotated[int, Field(ge=2)] = 7
    """Daily partitions: days in a run's window (the end date and the ``window_days - 1`` days before it)."""
    valid_days: Annotated[int, Field(ge=1)] = 1
    """Daily partitions: the last ``valid_days`` days of the window are the validation split (a time-based
    split, as a model trained today is used on tomorrow's traffic); the earlier days are training data."""
    user_features: str = "aliccp"
    """The input contract's user features: comma-separated raw column names, each an integer-coded
    categorical feature of the user (``"age_group,gender,occupation"``), ``name:continuous`` for a number,
    ``name:multi`` for a list of codes (``genres:multi``); ``aliccp`` = Ali-CCP's 11 user columns (planted
    and ``merlin`` data); empty = the user id only (see ``docs/input-data.md``)."""
    item_features: str = "aliccp"
    """As ``user_features``, for the item (``aliccp`` = ``item_category,item_shop,item_brand``)."""

    @model_validator(mode="after")
    def _window_and_input(self) -> DataConfig:
        _check(1 <= self.valid_days < self.window_days,
               f"data.valid_days must be >= 1 and < data.window_days ({self.window_days}), got {self.valid_days}")
        _check(not (self.partition_root and (self.train_path or self.valid_path)),
               "data.partition_root and data.train_path/data.valid_path are two ways to name parquet input; set one")
        _check(not self.partition_root or self.source == "parquet",
               f"data.partition_root is set but data.source is {self.source!r}; set data.source=parquet")
        return self


@dataclass(frozen=True, config=_SECTION)
class TransformConfig:
    """Stage 2: where NVTabular runs."""

    dask_cluster: Literal["none", "local", "local_cuda"] = "none"
    """``none``: one process (Dask's default scheduler); ``local``: a ``distributed.LocalCluster`` of CPU
    worker processes; ``local_cuda``: a ``dask_cuda.LocalCUDACluster``, one worker per visible GPU."""
    dask_workers: NonNegativeInt = 0
    """Workers of the local cluster; 0 lets Dask decide (one per GPU for ``local_cuda``, per core group
    for ``local``)."""
    part_size: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)] = "128MB"
    """In-memory size of the partitions NVTabular transforms and both fits' Merlin ``Loader`` read at a
    time (a Dask/Merlin size string): what bounds those stages' memory as the data grows."""


@dataclass(frozen=True, config=_SECTION)
class RetrievalConfig:
    """Stage 3: Two-Tower retrieval model (merlin-models ``TwoTowerModelV2``, in-batch negatives)."""

    tower_dims: Annotated[Ints, Field(min_length=1)] = (128, 64)
    """MLP layers of each tower; the last one is the embedding size."""
    optimizer: str = "lazy_adam"
    """``lazy_adam`` (Adam that updates only the embedding rows a batch looked up, see
    :func:`recsys_tasks.training.optimizers.lazy_adam_class`: the step cost does not grow with the number of users) or
    any Keras optimizer name (``adam`` rewrites every embedding row on every step)."""
    batch_size_rows: PositiveInt = 512
    """Training clicks per gradient step (the in-batch negatives of each click are the batch's other items).
    Smaller than the notebook's 4096 so a daily job takes enough steps to learn (docs/decisions.md)."""
    epochs: Annotated[int, Field(ge=1)] = 8
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


@dataclass(frozen=True, config=_SECTION)
class RankingConfig:
    """Stage 4: DLRM ranking model (merlin-models ``DLRMModel``)."""

    embedding_dim: int = 64
    bottom_dims: Ints = (128, 64)
    top_dims: Ints = (128, 64, 32)
    optimizer: str = "lazy_adam"
    """As ``retrieval.optimizer``."""
    batch_size_rows: PositiveInt = 1024
    """Training impressions per gradient step; smaller than the notebook's 16k so a daily job takes enough
    steps to learn (docs/decisions.md)."""
    epochs: Annotated[int, Field(ge=1)] = 3
    """At most this many passes over the training impressions (see ``early_stopping_patience``)."""
    early_stopping_patience: int = 1
    """As ``retrieval.early_stopping_patience``, on the validation log loss."""
    seed: int = 42
    learning_rate: float = 0.001
    """Adam's step size."""


@dataclass(frozen=True, config=_SECTION)
class ScoringConfig:
    """Stage 5: retrieve K candidates per user, drop seen items, rank, keep N."""

    top_k: int = 100
    """Candidates retrieved per user by dot product over the whole catalog."""
    top_n: Annotated[int, Field(ge=1)] = 20
    """Length of each published list."""
    user_chunk_size: PositiveInt = 4096
    """Users retrieved and ranked per step (bounds memory: on a GPU a chunk x catalog score matrix)."""
    rank_batch_rows: PositiveInt = 16_384
    """(user, item) pairs per TensorFlow DLRM call: the whole model, or the split's per-pair step on a GPU
    (on a CPU that step is the numba kernel of :mod:`recsys_tasks.scoring.kernels.dlrm_cpu`, 32 users per
    thread task)."""
    retrieval_kernel: Literal["auto", "tiled", "tensorflow", "ivf", "hnsw"] = "auto"
    """Exact: ``tiled`` (CPU: BLAS on cache-sized tiles folded into a running top-k,
    :mod:`recsys_tasks.scoring.kernels.topk`)
    or ``tensorflow`` (one matrix product per chunk, seen items masked, ``tf.math.top_k``: fastest on a
    GPU); same lists either way. Approximate (FAISS, :mod:`recsys_tasks.scoring.kernels.ann`): ``ivf`` or ``hnsw``.
    ``auto``: ``tensorflow`` when TensorFlow sees a GPU; on a CPU ``tiled`` below ``ann_min_items``
    items and ``ann_kernel`` from there on."""
    ann_kernel: Literal["ivf", "hnsw"] = "ivf"
    """The approximate kernel ``auto`` uses on a CPU for catalogs of ``ann_min_items`` or more. ``ivf``
    because its index is reproducible (seeded k-means: a rerun publishes the same lists); HNSW's
    multi-threaded build is not, although it is faster (docs/decisions.md)."""
    ann_min_items: NonNegativeInt = 50_000
    """Catalog size from which ``auto`` retrieves approximately on a CPU. Below it exact retrieval, which
    loses nothing, is kept where an index would gain little (the measurement: docs/decisions.md)."""
    ann_threads: NonNegativeInt = 0
    """FAISS OpenMP threads for building and searching the index; 0: the cores this process may use."""
    ivf_lists: NonNegativeInt = 0
    """``ivf``: k-means cells; 0 = 4 x sqrt(items)."""
    ivf_probe: Annotated[int, Field(ge=1)] = 32
    """``ivf``: cells searched per query (recall vs speed): more cells, higher recall, slower queries. Take
    it from the bench's sweep on your own trained embeddings (docs/decisions.md, docs/performance.md)."""
    hnsw_m: Annotated[int, Field(ge=2)] = 32
    """``hnsw``: graph neighbours per node."""
    hnsw_ef_construction: Annotated[int, Field(ge=1)] = 40
    """``hnsw``: candidate list size while building (build time vs graph quality)."""
    hnsw_ef_search: Annotated[int, Field(ge=1)] = 128
    """``hnsw``: candidate list size per query (recall vs speed; at least the number fetched)."""
    factored_ranking: bool = True
    """Rank with the DLRM split into per-user, per-item and cross parts (:mod:`recsys_tasks.scoring.ranker`;
    same scores up to float rounding); ``false``, or a model of another shape, runs the whole model per pair."""
    exclude: Literal["clicked", "interacted"] = "clicked"
    """Items a user's list may not hold, in scoring, evaluation and the popularity baseline alike: ``clicked``
    (their training clicks: the default, for impression logs, where an item shown and not clicked may
    still be clicked later) or ``interacted`` (every item they were shown in training: use it for
    rating-derived data, where every rating is an impression and a rated movie is not recommended again)."""
    history: Literal["train", "window"] = "window"
    """Which days the published lists know: ``window`` (default) every day of the window, so items a user
    clicked (or, with ``exclude=interacted``, was shown) in the validation days are excluded too and the
    popularity prior counts the newest days; ``train`` the training days only. The blend fit and the quality
    gate always use the training days, on the validation days' clicks: with ``window`` the gate judges the
    lists the same models and blend give from the training days (recsys_tasks/scoring/catalog.py)."""
    window_users: Literal["fold_in", "popularity"] = "fold_in"
    """With ``history=window``, the lists of users active only in the validation days (the models have no
    embedding for them; :mod:`recsys_tasks.scoring.window_users`): ``fold_in`` (default) fits, on known users
    treated as new, whether the mean embedding of the items they clicked plus a weighted popularity prior
    beats the popularity list, and uses it only when it does beyond noise; ``popularity`` the popularity list
    without a fit. Both leave out the user's own items (docs/quality-and-gate.md)."""
    blend: Literal["fit", "retrieval", "dlrm"] = "fit"
    """Final order of each user's K candidates (:mod:`recsys_tasks.scoring.blend`): ``fit`` (default) picks, on a
    sample of validation users, the best by recall@N of the retrieval order, the DLRM order and blends of the
    retrieval score, DLRM logit and log popularity, so the published order never loses to retrieval order on
    validation; ``retrieval`` or ``dlrm`` force that order without a fit."""
    popularity_half_lives_days: PositiveFloats = (7.0, 28.0)
    """Half-lives (days) of the time-decayed popularity priors the blend fit tries beside the all-time one
    (:mod:`recsys_tasks.scoring.popularity`); daily partitions only (other sources have no days); empty: all
    time only."""
    popular_candidates: NonNegativeInt = 20
    """Most popular unseen items (under the blend's prior) added to each user's ``top_k`` retrieved candidates,
    so the blend can promote an item the Two-Tower did not retrieve; 0: retrieved candidates only."""
    min_coverage_ratio: Annotated[float, Field(ge=0, le=1)] = 0.25
    """The blend fit only chooses orders whose lists (on the fitting users) cover at least this share of the
    distinct items the retrieval order's cover: a guard against a collapse to everyone getting the same
    items (at 1M planted users the DLRM order once covered 4% of the catalogue). Not a diversity target:
    on MovieLens-100K the trend-weighted orders that win on validation cover about half of what the
    retrieval order covers (0.48-0.55 on 75 users), and a guard of 0.8 cut test recall@20 from 0.238 to
    0.150 (docs/quality-and-gate.md)."""
    blend_requires_significant_gain: bool = True
    """The fitted order replaces the retrieval order only when its gain, chosen on 4/5 of the fitting users and
    measured on the other fifth (5 folds), has a 95% interval above 0; else the retrieval order is published and the
    plan's reason says why. At 100k planted users a blend that won by +0.006 recall@20 on 1,951 fitting
    users was level on 8,000 others and covered 79% of the retrieval order's items (docs/quality-and-gate.md)."""
    blend_sample_users: NonNegativeInt = 20_000
    """Validation users (known from training, seeded sample) the blend is fitted on; 0 means all. The fit scores
    about (top_k + popular_candidates) candidates of each with the DLRM per prior tried: a few seconds at this
    size."""
    blend_seed: int = 7
    """Seed of that sample."""
    num_shards: Annotated[int, Field(ge=1)] = 1
    """Users are split into this many contiguous shards, scored independently (one mapped Airflow task
    each, so several GPU workers score in parallel) and written as one recommendations part per shard."""

    @model_validator(mode="after")
    def _k_covers_n(self) -> ScoringConfig:
        _check(self.top_k >= self.top_n, f"scoring.top_k ({self.top_k}) must be >= scoring.top_n ({self.top_n})")
        return self


@dataclass(frozen=True, config=_SECTION)
class StoreConfig:
    """Stage 6: RedisJSON documents."""

    key_prefix: Annotated[str, Field(min_length=1)] = "USER:"
    """Documents live at ``<key_prefix><raw user id>``, as in the notebook."""
    manifest_key: str = "RECSYS:MANIFEST"
    """Written after the last document of a run: run id, user count, time."""
    ttl_s: PositiveInt = 3 * 24 * 3600
    """Every document expires after this many seconds unless a later run rewrites it."""
    pipeline_chunk_keys: PositiveInt = 2000
    """Documents sent per pipelined round trip."""
    force: bool = False
    """Publish even when the manifest names a newer logical date: the rollback / forced-backfill switch."""
    lock_key: str = "RECSYS:LOCK"
    """One load at a time: ``SET NX PX`` with a per-load token, renewed while the load runs."""
    lock_ttl_s: PositiveInt = 120
    """A lock that is not renewed (its worker was killed) expires after this many seconds."""
    lock_wait_s: NonNegativeFloat = 60.0
    """How long a load waits for another load's lock before failing (then Airflow retries)."""
    retry_attempts: Annotated[int, Field(ge=1)] = 5
    """Tries per Redis command or pipelined chunk on connection errors and timeouts."""
    retry_backoff_s: NonNegativeFloat = 0.5
    """First wait between tries; doubles on each failure up to ``retry_backoff_max_s``."""
    retry_backoff_max_s: float = 8.0
    socket_timeout_s: PositiveFloat = 30.0
    """Socket connect/read timeout for clients that do not set one (a hung Redis becomes a retry)."""
    memory_sample_keys: NonNegativeInt = 100
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
    min_replicas_acked: Annotated[int, Field(ge=-1)] = -1
    """After the write phase each master must confirm (``WAIT``) that this many replicas hold its writes;
    -1: one where the master has a connected replica, none on a lone node; 0: do not wait."""
    replica_ack_timeout_s: PositiveFloat = 10.0
    """How long ``WAIT`` waits for the replicas (bounded by ``socket_timeout_s``)."""
    verify_writes: bool = True
    """Before the manifest, read every key of the run back (its ``run_id``) and write again what is missing."""

    @model_validator(mode="after")
    def _backoff_and_keys(self) -> StoreConfig:
        _check(self.retry_backoff_s <= self.retry_backoff_max_s,
               "store.retry_backoff_s must be >= 0 and <= store.retry_backoff_max_s")
        _check(self.manifest_key != self.lock_key and not self.manifest_key.startswith(self.key_prefix)
               and not self.lock_key.startswith(self.key_prefix),
               "store.manifest_key and store.lock_key must differ and lie outside store.key_prefix")
        return self


@dataclass(frozen=True, config=_SECTION)
class EvaluateConfig:
    """Stage ``evaluate``: offline metrics of the run, written to ``report.json``."""

    cutoffs: Annotated[tuple[Annotated[int, Field(ge=1)], ...], BeforeValidator(_split_ints), NoDecode] = (10, 20)
    """Retrieval cut-offs k of recall@k / ndcg@k; ``scoring.top_k`` is always added."""
    plots: bool = True
    """Write the PNG plots and ``report.md`` next to ``report.json``."""
    sample_users: NonNegativeInt = 50_000
    """Validation users (known from training) the metrics are computed on, a seeded sample; every such user
    when there are fewer, and 0 means all. Bounds the stage's time and memory; each metric reports its 95%
    interval over the sample."""
    sample_seed: int = 42
    """Seed of that sample (the same users are evaluated on every rerun of a run)."""


@dataclass(frozen=True, config=_SECTION)
class QualityConfig:
    """The gate ``load_redis`` runs before writing anything (see ``recsys_tasks/evaluation/gate.py``)."""

    min_recall_lift: NonNegativeFloat = 1.2
    """Retrieval recall@10 must be at least this multiple of the popularity baseline's."""
    min_ranking_auc: Annotated[float, Field(ge=0, le=1)] = 0.6
    """Validation AUC of the ranking model must be at least this."""
    min_user_coverage: Annotated[float, Field(ge=0, le=1)] = 0.99
    """Share of scored users that must have a full (top-N) list."""
    force_publish: bool = False
    """Operator override: publish even when checks fail (logged loudly, recorded in the summary)."""


@dataclass(frozen=True, config=_SECTION)
class RetentionConfig:
    """Run directories kept on disk (the ``prune_runs`` task at the end of the DAG)."""

    keep_runs: NonNegativeInt = 7
    """The newest run directories (by the time each run started) that are kept; older ones are deleted,
    except the run the Redis manifest names and runs Airflow still reports as running. 0 keeps all."""
