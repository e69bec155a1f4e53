"""Ranking that reuses work: the DLRM split into per-user, per-item and cross parts, exactly.

Merlin Models' ``DLRMModel`` on categorical features only (our schema) is: one embedding per feature (a
multi-valued feature's the mean over its values), the features stacked in name order, the pairwise dot
products of the stack (upper triangle, row-major, no diagonal), the top MLP, a 1-unit output layer and a
sigmoid. The first top-MLP layer is linear before its activation, so its input splits by which side each
dot product involves::

    W1 . x + b1 = W1[user-user] . x_uu  +  (W1[item-item] . x_ii + b1)  +  W1[user-item] . x_ui

The first term depends on the user only and the second on the item only: each is computed once per
user and once per unique candidate item of a chunk; per (user, candidate) pair only the ``|U| x |I|``
cross dot products, their share of the first layer and the rest of the MLP remain. The answer is the
model's own up to float rounding (summation order): :func:`make_ranker` checks it against the model on
sample pairs and falls back to the whole model (with a warning naming why) for any other architecture.
The whole model on every pair (:func:`rank_pairs`) lives here too: the reference the split is held to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..features.lists import ListColumn, as_column, dtype_key, model_batch, model_signature
from ..runtime import get_logger

log = get_logger("score")

CHECK_PAIRS = 512
"""(user, item) pairs scored both ways when the ranker is made; any disagreement disables the split."""
CHECK_ATOL = 2e-5
"""Probabilities may differ by float rounding only (different summation order)."""


class ArchitectureMismatch(ValueError):
    """The ranking model is not the DLRM shape the split assumes (the whole model is used instead)."""


@dataclass
class DLRMParts:
    """Weights of a categorical-only DLRM, laid out for the split computation."""

    user_features: list[str]
    item_features: list[str]
    tables: dict[str, Any]
    """Feature name -> embedding table (a ``tf.Variable`` ``[cardinality, dim]``)."""
    first_user: Any
    """``[|U|(|U|-1)/2, hidden]``: rows of the first layer for user-user dot products (pairs i<j, row-major)."""
    first_item: Any
    first_cross: Any
    """``[|U| * |I|, hidden]``: rows for user-item dot products, user feature major."""
    first_bias: Any
    first_activation: Any
    rest: list[tuple[Any, Any, Any]]
    """The later dense layers as ``(kernel, bias, activation)``; a sigmoid follows the last (checked)."""


def _layers(model: Any) -> list[Any]:
    """Every nested Keras layer once (``Module.submodules`` trips over Keras' weak-key caches)."""
    found, stack, seen = [], [model], set()
    while stack:
        layer = stack.pop()
        for child in layer._flatten_layers(include_self=False, recursive=False):
            if id(child) not in seen:
                seen.add(id(child))
                found.append(child)
                stack.append(child)
    return found


def _dense_layers(model: Any) -> list[Any]:
    import tensorflow as tf

    return [layer for layer in _layers(model) if isinstance(layer, tf.keras.layers.Dense)]


def _embedding_tables(model: Any) -> dict[str, Any]:
    tables = {}
    for module in _layers(model):
        if type(module).__name__ == "EmbeddingTable" and getattr(module, "table", None) is not None:
            names = list(getattr(module, "features", {}) or []) or [module.col_schema.name]
            for name in names:
                tables[name] = module.table.embeddings
    return tables


def extract_parts(model: Any, user_features: list[str], item_features: list[str]) -> DLRMParts:
    """The split weights of ``model``; :class:`ArchitectureMismatch` when its shape is not the expected one."""
    tables = _embedding_tables(model)
    features = sorted(user_features + item_features)
    missing = [f for f in features if f not in tables]
    if missing:
        raise ArchitectureMismatch(f"no embedding table for feature(s) {missing}")
    extra = sorted(set(tables) - set(features))
    if extra:
        raise ArchitectureMismatch(f"embedding tables for features scoring does not feed: {extra}")
    dims = {int(t.shape[1]) for t in tables.values()}
    if len(dims) != 1:
        raise ArchitectureMismatch(f"embedding sizes differ ({sorted(dims)}): not a DLRM interaction")
    count = len(features)
    interactions = count * (count - 1) // 2
    # Order the dense layers by chaining their shapes from the interaction width down to one unit.
    dense = _dense_layers(model)
    chain, width = [], interactions
    while True:
        following = [d for d in dense if int(d.kernel.shape[0]) == width and d not in chain]
        if len(following) != 1:
            break
        chain.append(following[0])
        width = int(following[0].kernel.shape[1])
    if len(chain) != len(dense) or width != 1 or len(chain) < 2:
        raise ArchitectureMismatch(
            f"dense layers {[tuple(d.kernel.shape) for d in dense]} are not one MLP from the "
            f"{interactions} pairwise dot products of {count} features to one output"
        )
    position = {f: i for i, f in enumerate(features)}
    pair_row = {}
    row = 0
    for i in range(count):
        for j in range(i + 1, count):
            pair_row[(i, j)] = row
            row += 1

    def rows(pairs: list[tuple[str, str]]) -> np.ndarray:
        return np.array([pair_row[tuple(sorted((position[a], position[b])))] for a, b in pairs], dtype=np.int64)

    users = sorted(user_features)
    items = sorted(item_features)
    user_pairs = [(users[i], users[j]) for i in range(len(users)) for j in range(i + 1, len(users))]
    item_pairs = [(items[i], items[j]) for i in range(len(items)) for j in range(i + 1, len(items))]
    cross_pairs = [(u, v) for u in users for v in items]
    first = chain[0]
    kernel = first.kernel.numpy()
    if not first.use_bias:
        raise ArchitectureMismatch("the first top-MLP layer has no bias")
    return DLRMParts(
        user_features=users,
        item_features=items,
        tables={f: tables[f] for f in features},
        first_user=kernel[rows(user_pairs)] if user_pairs else np.zeros((0, kernel.shape[1]), np.float32),
        first_item=kernel[rows(item_pairs)] if item_pairs else np.zeros((0, kernel.shape[1]), np.float32),
        first_cross=kernel[rows(cross_pairs)],
        first_bias=first.bias.numpy(),
        first_activation=first.activation,
        rest=[(d.kernel, d.bias if d.use_bias else None, d.activation) for d in chain[1:]],
    )


class FactoredRanker:
    """Scores ``[users, k]`` candidate matrices with the split DLRM.

    The per-user and per-item parts always run in TensorFlow (once per user, once per unique candidate
    item of a chunk). The per-pair part runs in TensorFlow (``pair_kernel="tensorflow"``: what a GPU runs)
    or in the fused numba kernel of :mod:`recsys_tasks.scoring.kernels.dlrm_cpu` (``"numba"``: on a CPU, ~1.5x faster).
    """

    def __init__(self, parts: DLRMParts, user_table: dict[str, np.ndarray], item_table: dict[str, np.ndarray],
                 batch_rows: int, pair_kernel: str = "tensorflow") -> None:
        import tensorflow as tf

        self.parts = parts
        self.batch_rows = batch_rows
        self.cpu_pairs = None
        if pair_kernel == "numba":
            from .kernels.dlrm_cpu import CpuPairs

            self.cpu_pairs = CpuPairs(parts)
        elif pair_kernel != "tensorflow":
            raise ValueError(f"unknown pair kernel {pair_kernel!r} (numba or tensorflow)")
        self.pair_kernel = pair_kernel
        # A multi-valued feature's vector (the mean of its values' embeddings) depends on the row alone: it is
        # pooled once for every user or item row, and looked up by row like an id.
        user_tables, self.user_ids = _side_tables(parts.tables, parts.user_features, user_table, batch_rows)
        item_tables, self.item_ids = _side_tables(parts.tables, parts.item_features, item_table, batch_rows)
        nu, ni = len(parts.user_features), len(parts.item_features)
        upper_u = np.triu(np.ones((nu, nu), dtype=bool), 1)
        upper_i = np.triu(np.ones((ni, ni), dtype=bool), 1)
        first_user = tf.constant(parts.first_user)
        first_item = tf.constant(parts.first_item)
        first_cross = tf.constant(parts.first_cross)
        first_bias = tf.constant(parts.first_bias)

        def stack(tables: list[Any], ids: Any) -> Any:
            return tf.stack([tf.gather(t, ids[:, i]) for i, t in enumerate(tables)], axis=1)

        def self_terms(vectors: Any, upper: np.ndarray, weights: Any) -> Any:
            if not upper.any():
                return tf.zeros([tf.shape(vectors)[0], weights.shape[1]], vectors.dtype)
            dots = tf.boolean_mask(tf.matmul(vectors, vectors, transpose_b=True), upper, axis=1)
            return tf.matmul(dots, weights)

        @tf.function(input_signature=[tf.TensorSpec([None, nu], tf.int64)])
        def user_side(ids: Any) -> tuple[Any, Any]:
            vectors = stack(user_tables, ids)
            return vectors, self_terms(vectors, upper_u, first_user)

        @tf.function(input_signature=[tf.TensorSpec([None, ni], tf.int64)])
        def item_side(ids: Any) -> tuple[Any, Any]:
            vectors = stack(item_tables, ids)
            return vectors, self_terms(vectors, upper_i, first_item) + first_bias

        rest = parts.rest
        activation = parts.first_activation

        @tf.function(input_signature=[tf.TensorSpec([None, nu, None], tf.float32),
                                      tf.TensorSpec([None, None], tf.float32),
                                      tf.TensorSpec([None, ni, None], tf.float32),
                                      tf.TensorSpec([None, None], tf.float32),
                                      tf.TensorSpec([None, None], tf.int32)])
        def pairs(user_vectors: Any, user_terms: Any, item_vectors: Any, item_terms: Any, candidates: Any) -> Any:
            users = tf.shape(candidates)[0]
            k = tf.shape(candidates)[1]
            dim = tf.shape(user_vectors)[2]
            # [users, k * |I|, dim] @ [users, dim, |U|] -> every cross dot product of every pair.
            candidate_vectors = tf.reshape(tf.gather(item_vectors, candidates), [users, k * ni, dim])
            cross = tf.matmul(candidate_vectors, user_vectors, transpose_b=True)  # [users, k*|I|, |U|]
            cross = tf.transpose(tf.reshape(cross, [users, k, ni, nu]), [0, 1, 3, 2])  # user feature major
            cross = tf.reshape(cross, [users * k, nu * ni])
            hidden = tf.matmul(cross, first_cross)
            hidden = tf.reshape(hidden, [users, k, -1]) + user_terms[:, None, :]
            hidden = tf.reshape(hidden, [users * k, -1]) + tf.gather(item_terms, tf.reshape(candidates, [-1]))
            hidden = activation(hidden)
            for kernel, bias, act in rest:
                hidden = tf.matmul(hidden, kernel)
                if bias is not None:
                    hidden = hidden + bias
                hidden = act(hidden)
            return tf.reshape(tf.sigmoid(hidden), [users, k])

        self._user_side, self._item_side, self._pairs = user_side, item_side, pairs

    def __call__(self, user_rows: np.ndarray, candidate_rows: np.ndarray) -> np.ndarray:
        """DLRM click probability of every (user, candidate) pair, ``[users, k]`` (item row -1: any value)."""
        users, k = candidate_rows.shape
        out = np.empty((users, k), dtype=np.float32)
        if users == 0 or k == 0:
            return out
        items, inverse = np.unique(np.where(candidate_rows >= 0, candidate_rows, 0), return_inverse=True)
        inverse = inverse.reshape(users, k).astype(np.int32)
        item_vectors, item_terms = self._item_side(self.item_ids[items])
        if self.cpu_pairs is not None:
            user_vectors, user_terms = self._user_side(self.user_ids[user_rows])
            return self.cpu_pairs(user_vectors.numpy(), user_terms.numpy(), item_vectors.numpy(),
                                  item_terms.numpy(), inverse)
        step = max(1, self.batch_rows // k)
        for start in range(0, users, step):
            stop = min(start + step, users)
            user_vectors, user_terms = self._user_side(self.user_ids[user_rows[start:stop]])
            out[start:stop] = self._pairs(user_vectors, user_terms, item_vectors, item_terms,
                                          inverse[start:stop]).numpy()
        return out


def pooled_embeddings(table: Any, column: ListColumn, batch_rows: int) -> Any:
    """``[rows, dim]``: each row's mean embedding over its values, as Merlin's ``EmbeddingTable`` combines a list
    feature (``safe_embedding_lookup_sparse``, combiner ``mean``; the ranker's check holds it to the model)."""
    import tensorflow as tf

    parts = []
    for start in range(0, len(column), batch_rows):
        rows = column[start:start + batch_rows]
        ids = tf.RaggedTensor.from_row_splits(rows.values.astype(np.int64), rows.offsets).to_sparse()
        parts.append(tf.nn.safe_embedding_lookup_sparse(table, ids, None, combiner="mean"))
    return tf.concat(parts, axis=0) if parts else tf.zeros([0, table.shape[1]], table.dtype)


def _side_tables(tables: dict[str, Any], features: list[str], side: dict[str, Any],
                 batch_rows: int) -> tuple[list[Any], np.ndarray]:
    """One side's lookup tables and ``[rows, features]`` lookup ids: a categorical feature's own table and
    codes; a list feature's pooled rows (:func:`pooled_embeddings`) and the row numbers."""
    lookups, ids = [], []
    for feature in features:
        column = side[feature]
        if isinstance(column, ListColumn):
            lookups.append(pooled_embeddings(tables[feature], column, batch_rows))
            ids.append(np.arange(len(column), dtype=np.int64))
        else:
            lookups.append(tables[feature])
            ids.append(np.asarray(column, dtype=np.int64))
    return lookups, np.stack(ids, axis=1)


def pair_features(catalog: Any, user_rows: np.ndarray, item_rows: np.ndarray) -> dict[str, Any]:
    """DLRM inputs for every (user, candidate) pair, flattened row-major: user-major, candidate-minor."""
    k = item_rows.shape[1]
    flat_users = np.repeat(user_rows, k)
    flat_items = np.where(item_rows >= 0, item_rows, 0).reshape(-1)
    features = {c: v[flat_users] for c, v in catalog.user_features.items() if c != "user_id_raw"}
    features.update({c: v[flat_items] for c, v in catalog.item_features.items() if c != "item_id_raw"})
    return features


_COMPILED: dict[Any, tuple[Any, Any]] = {}


def compiled_predict(model: Any, features: dict[str, Any]) -> Any:
    """The model's forward pass as one ``tf.function`` (traced once per model and input dtypes).

    Calling a Keras/Merlin model eagerly runs it layer by layer from Python; a traced graph is what
    ``model.predict`` runs, without its per-call data-adapter overhead. The batch dimension is left
    open so the last, shorter batch does not trigger a retrace.
    """
    import tensorflow as tf

    key = (id(model), tuple(sorted((c, dtype_key(v)) for c, v in features.items())))
    cached = _COMPILED.get(key)
    if cached is None or cached[0] is not model:
        signature = model_signature(features)
        fn = tf.function(lambda batch: model(batch, training=False), input_signature=[signature])
        cached = _COMPILED[key] = (model, fn)
    return cached[1]


def rank_pairs(model: Any, features: dict[str, Any], batch_rows: int) -> np.ndarray:
    """DLRM click probability for every pair, in batches of ``batch_rows`` (a list feature: a
    :class:`ListColumn` or an object array of arrays)."""
    features = {c: as_column(v) for c, v in features.items()}
    total = len(next(iter(features.values())))
    out = np.empty(total, dtype=np.float32)
    if total == 0:
        return out
    predict = compiled_predict(model, features)
    for start in range(0, total, batch_rows):
        stop = min(start + batch_rows, total)
        out[start:stop] = predict(model_batch(features, start, stop)).numpy().reshape(-1)
    return out


class WholeModelRanker:
    """The model itself on every pair (the reference, and the fallback for other architectures)."""

    def __init__(self, model: Any, catalog: Any, batch_rows: int) -> None:
        self.model, self.catalog, self.batch_rows = model, catalog, batch_rows

    def __call__(self, user_rows: np.ndarray, candidate_rows: np.ndarray) -> np.ndarray:
        scores = rank_pairs(self.model, pair_features(self.catalog, user_rows, candidate_rows), self.batch_rows)
        return scores.reshape(candidate_rows.shape)


def pair_kernel_for(parts: DLRMParts) -> str:
    """``numba`` on a CPU when the kernel has every activation of ``parts``, else ``tensorflow``."""
    from ..runtime import device

    if device() != "cpu":
        return "tensorflow"
    from .kernels.dlrm_cpu import UnsupportedActivation, cpu_activation_codes

    try:
        cpu_activation_codes([parts.first_activation] + [activation for _, _, activation in parts.rest])
    except UnsupportedActivation as exc:
        log.info("ranking's per-pair step in TensorFlow: %s", exc)
        return "tensorflow"
    return "numba"


def make_ranker(model: Any, catalog: Any, batch_rows: int, factored: bool = True, seed: int = 0,
                pair_kernel: str = "auto") -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The split ranker when ``factored`` and the model has the expected shape (checked on sample pairs).

    ``pair_kernel``: ``auto`` (:func:`pair_kernel_for`), ``numba`` or ``tensorflow``.
    """
    whole = WholeModelRanker(model, catalog, batch_rows)
    if not factored:
        return whole
    users = [c for c in catalog.user_features if c != "user_id_raw"]
    items = [c for c in catalog.item_features if c != "item_id_raw"]
    try:
        parts = extract_parts(model, users, items)
        kernel = pair_kernel_for(parts) if pair_kernel == "auto" else pair_kernel
        ranker = FactoredRanker(parts, catalog.user_features, catalog.item_features, batch_rows, kernel)
        rng = np.random.default_rng(seed)
        sample_users = rng.integers(0, catalog.num_users, max(1, CHECK_PAIRS // 8))
        sample_items = rng.integers(0, catalog.num_items, (len(sample_users), min(8, catalog.num_items)))
        expected, got = whole(sample_users, sample_items), ranker(sample_users, sample_items)
        difference = float(np.max(np.abs(expected - got)))
        if not difference <= CHECK_ATOL:
            raise ArchitectureMismatch(f"split scores differ from the model's by up to {difference:.2e} on "
                                       f"{expected.size} sample pairs")
    except ArchitectureMismatch as exc:
        log.warning("ranking with the whole DLRM per pair (not the per-user/per-item split): %s", exc)
        return whole
    log.info("ranking with the DLRM split into per-user, per-item and cross parts (per-pair step in %s; "
             "checked on %d pairs, max difference %.1e)", ranker.pair_kernel, expected.size, difference)
    return ranker
