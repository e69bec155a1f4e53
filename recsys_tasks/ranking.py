"""Stage 4: the notebook's DLRM ranking model, trained on all impressions to predict clicks.

Reports validation AUC and exports the model as a SavedModel that scoring reloads.
"""

from __future__ import annotations

from typing import Any

from .common import get_logger, make_optimizer, quiet_tensorflow, seed_everything, stage
from .config import Config, RankingConfig
from .paths import RunPaths, require
from .transform import RAW_ID_COLUMNS, TARGET

log = get_logger("fit_ranking")


def build_dlrm(schema: Any, settings: RankingConfig) -> Any:
    import merlin.models.tf as mm
    import tensorflow as tf

    model = mm.DLRMModel(
        schema,
        embedding_dim=settings.embedding_dim,
        bottom_block=mm.MLPBlock(list(settings.bottom_dims)),
        top_block=mm.MLPBlock(list(settings.top_dims)),
        prediction_tasks=mm.BinaryClassificationTask(TARGET),
    )
    model.compile(
        optimizer=make_optimizer(settings.optimizer, settings.learning_rate),
        run_eagerly=False,
        metrics=[tf.keras.metrics.AUC(name="auc")],
    )
    return model


def load_dlrm(path: Any) -> Any:
    """Reload an exported DLRM (merlin.models.tf must be imported for its custom layers)."""
    quiet_tensorflow()
    import merlin.models.tf  # noqa: F401
    import tensorflow as tf

    return tf.keras.models.load_model(str(path))


@stage("fit_ranking")
def fit_ranking(config: Config, paths: RunPaths) -> dict[str, Any]:
    quiet_tensorflow()
    settings = config.ranking
    seed_everything(settings.seed)
    from merlin.io import Dataset

    train = Dataset(str(require(paths.train, "transform") / "*.parquet"), engine="parquet")
    valid = Dataset(str(require(paths.valid, "transform") / "*.parquet"), engine="parquet")
    schema = train.schema.without(RAW_ID_COLUMNS)
    train.schema = schema
    valid.schema = schema

    model = build_dlrm(schema, settings)
    history = model.fit(train, batch_size=settings.batch_size_rows, epochs=settings.epochs, verbose=0)
    losses = [round(float(v), 6) for v in history.history["loss"]]
    log.info("DLRM loss per epoch: %s", losses)
    evaluated = model.evaluate(valid, batch_size=settings.batch_size_rows, return_dict=True, verbose=0)
    metrics = {"auc": float(evaluated["auc"]), "loss": float(evaluated["loss"])}
    log.info("validation: %s", metrics)

    paths.fresh(paths.ranking)
    model.save(str(paths.dlrm))
    return {
        "metrics": metrics,
        "loss_per_epoch": losses,
        "input_features": schema.without([TARGET]).column_names,
        "dlrm": str(paths.dlrm),
    }
