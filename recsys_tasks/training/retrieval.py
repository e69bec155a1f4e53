"""Stage 3: the notebook's Two-Tower retrieval model (``TwoTowerModelV2``, in-batch negatives).

Trains on clicks, evaluates recall/ndcg over the full item catalog through a top-k encoder, and
exports the query tower, user and item feature tables and user and item embeddings for scoring.

In-batch negatives make the towers learn ``log P(item | user) - log Q(item)`` where Q is the item's
share of training clicks (every positive is also everybody's negative in proportion to its clicks),
so popular items are systematically under-scored. With ``retrieval.popularity_correction`` (default)
the exported embeddings carry the standard logQ correction as one extra column, ``popularity_bias``:
1.0 for every user and ``log Q(item)`` for every item, so any dot-product consumer (scoring, a vector
index) ranks by ``<query, item> + log Q(item)`` without knowing about it.
"""

from __future__ import annotations

from typing import Any

from ..config import Config, RetrievalConfig
from ..features.tables import build_feature_tables, table_columns
from ..features.workflow import RAW_ID_COLUMNS, TARGET
from ..paths import RunPaths, require
from ..runtime import get_logger, stage
from .loader import fit_data, fit_model
from .optimizers import make_optimizer

log = get_logger("fit_retrieval")

EVAL_BATCH_ROWS = 1024


def model_schema(dataset: Any) -> Any:
    """User and item features of the processed data, without raw ids and target (as in the notebook)."""
    from merlin.schema.tags import Tags

    return dataset.schema.select_by_tag([Tags.ITEM_ID, Tags.USER_ID, Tags.ITEM, Tags.USER]).without(
        [*RAW_ID_COLUMNS, TARGET]
    )


def build_two_tower(schema: Any, settings: RetrievalConfig) -> Any:
    import merlin.models.tf as mm
    from merlin.schema.tags import Tags

    def tower(tag: Any) -> Any:
        return mm.Encoder(
            mm.InputBlockV2(schema.select_by_tag(tag)),
            mm.MLPBlock(list(settings.tower_dims), no_activation_last_layer=True),
        )

    model = mm.TwoTowerModelV2(tower(Tags.USER), tower(Tags.ITEM))
    model.compile(
        optimizer=make_optimizer(settings.optimizer, settings.learning_rate),
        run_eagerly=False,
        loss="categorical_crossentropy",
        # No top-k metrics in training: with in-batch negatives they would rank only the batch's items
        # (and fail on a batch smaller than k); recall/ndcg are measured over the full catalog instead.
    )
    return model


def encode(encoder: Any, table: Any, columns: list[str], batch_rows: int) -> Any:
    """Run one tower over a feature table in batches; returns a float32 ``[rows, dim]`` array.

    Calling the tower directly avoids Merlin's ``*_embeddings`` helpers, which save and reload the
    whole model through a temporary SavedModel on every call.
    """
    import numpy as np
    import tensorflow as tf

    from ..features.lists import as_column, model_batch

    # A multi-valued feature goes in as the values/offsets pair the loader feeds in training.
    features = {c: as_column(table[c].to_numpy()) for c in columns}
    parts = []
    for start in range(0, len(table), batch_rows):
        batch = model_batch(features, start, min(start + batch_rows, len(table)))
        inputs = {name: tf.constant(values) for name, values in batch.items()}
        parts.append(np.asarray(encoder(inputs, training=False), dtype=np.float32))
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


POPULARITY_BIAS_COLUMN = "popularity_bias"


def click_log_frequency(clicks_dir: Any, item_ids: Any) -> Any:
    """``log Q(item)``: each item's share of training clicks, add-one smoothed, aligned with ``item_ids``."""
    import numpy as np

    from ..features.tables import read_processed

    clicked = read_processed(clicks_dir, columns=["item_id"])["item_id"].to_numpy()
    counts = np.zeros(int(max(item_ids.max(initial=0), clicked.max(initial=0))) + 1)
    np.add.at(counts, clicked, 1.0)
    per_item = counts[item_ids]
    return np.log((per_item + 1.0) / (per_item.sum() + len(item_ids)))


def full_catalog_metrics(model: Any, item_embeddings: Any, valid: Any, schema: Any, k: int) -> dict[str, float]:
    """recall@k and ndcg@k of the query tower over every item's embedding, on the validation clicks.

    A ``TopKEncoder`` ranks the whole catalog for each validation click, so the number of candidates per
    example is the catalog size whatever the batch; every validation row counts (no ``drop_last``).
    """
    import merlin.models.tf as mm
    from merlin.io import Dataset

    top_k_encoder = mm.TopKEncoder(
        model.query_encoder,
        candidates=Dataset(item_embeddings.set_index("item_id")),
        k=k,
        target="item_id",
    )
    top_k_encoder.compile(run_eagerly=False)
    eval_loader = mm.Loader(valid, batch_size=EVAL_BATCH_ROWS, shuffle=False).map(mm.ToTarget(schema, "item_id"))
    evaluated = top_k_encoder.evaluate(eval_loader, return_dict=True, verbose=0)
    return {f"recall_at_{k}": float(evaluated[f"recall_at_{k}"]), f"ndcg_at_{k}": float(evaluated[f"ndcg_at_{k}"])}


def embeddings_frame(ids: Any, vectors: Any, id_column: str) -> Any:
    import pandas as pd

    frame = pd.DataFrame(vectors, columns=[f"e{i}" for i in range(vectors.shape[1])])
    frame.insert(0, id_column, ids)
    return frame


@stage("fit_retrieval")
def fit_retrieval(config: Config, paths: RunPaths) -> dict[str, Any]:
    settings = config.retrieval
    data = fit_data(paths.retrieval_train, paths.retrieval_valid, config.transform.part_size, model_schema,
                    settings.seed)
    schema, valid, rows = data.schema, data.valid, data.train_rows
    from merlin.schema.tags import Tags

    model = build_two_tower(schema, settings)
    trained = fit_model(model, data, settings, f"fit_retrieval ({paths.retrieval_train})")
    losses = trained["loss_per_epoch"]
    log.info("two-tower loss per epoch: %s", losses)

    paths.fresh(paths.retrieval)
    user_columns, item_columns = table_columns(schema)  # the run's input contract, from the schema's tags
    user_table, item_table = build_feature_tables(require(paths.train, "transform"), user_columns=user_columns,
                                                  item_columns=item_columns)
    user_table.to_parquet(paths.user_features, index=False)
    item_table.to_parquet(paths.item_features, index=False)

    item_columns = schema.select_by_tag(Tags.ITEM).column_names
    user_columns = schema.select_by_tag(Tags.USER).column_names
    item_vectors = encode(model.candidate_encoder, item_table, item_columns, EVAL_BATCH_ROWS)
    user_vectors = encode(model.query_encoder, user_table, user_columns, EVAL_BATCH_ROWS)
    item_embeddings = embeddings_frame(item_table["item_id"].to_numpy(), item_vectors, "item_id")
    user_embeddings = embeddings_frame(user_table["user_id"].to_numpy(), user_vectors, "user_id")
    exported_items, exported_users = item_embeddings, user_embeddings
    if settings.popularity_correction:
        exported_items = item_embeddings.assign(**{
            POPULARITY_BIAS_COLUMN: click_log_frequency(paths.retrieval_train, item_table["item_id"].to_numpy())
        })
        exported_users = user_embeddings.assign(**{POPULARITY_BIAS_COLUMN: 1.0})
    exported_items.to_parquet(paths.item_embeddings, index=False)
    exported_users.to_parquet(paths.user_embeddings, index=False)

    # Full-catalog evaluation (the in-batch metrics seen during fit use sampled negatives only):
    # a top-k encoder over every item's tower embedding (without the popularity correction, which the
    # query tower does not produce), scored on validation clicks. The evaluate stage scores the exported,
    # corrected embeddings that scoring uses.
    metrics = full_catalog_metrics(model, item_embeddings, valid, schema, settings.eval_k)
    log.info("full-catalog evaluation on validation clicks: %s", metrics)
    model.query_encoder.save(str(paths.query_tower))

    return {
        # Named apart from evaluate's recall@k (per user, seen items masked, exported corrected embeddings):
        # one name, one definition across the summaries, the report and the gate.
        "metrics": {f"tower_{name}_per_click_unmasked": value for name, value in metrics.items()},
        "metrics_definition": "Merlin's top-k metrics of the query tower (no popularity correction) over the full "
                              "catalog, averaged over validation click rows, training clicks NOT masked; the "
                              "report's recall@k (evaluate) is per user with training clicks masked",
        "train_rows": rows,
        **trained,
        "users": int(len(user_table)),
        "items": int(len(item_table)),
        "embedding_dim": int(item_embeddings.shape[1] - 1),
        "popularity_correction": settings.popularity_correction,
        "query_tower": str(paths.query_tower),
        "user_embeddings": str(paths.user_embeddings),
        "item_embeddings": str(paths.item_embeddings),
    }
