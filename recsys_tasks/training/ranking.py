"""Stage 4: the notebook's DLRM ranking model, trained on all impressions to predict clicks.

Reports validation AUC and exports the model as a SavedModel that scoring reloads.
"""

from __future__ import annotations

from typing import Any

from ..config import Config, RankingConfig
from ..features.workflow import RAW_ID_COLUMNS, TARGET
from ..paths import RunPaths
from ..runtime import get_logger, quiet_tensorflow, stage
from .loader import fit_data, fit_model
from .optimizers import make_optimizer

log = get_logger("fit_ranking")


def build_dlrm(schema: Any, settings: RankingConfig) -> Any:
    import merlin.models.tf as mm
    import tensorflow as tf
    from merlin.models.tf.models.utils import parse_prediction_blocks

    # mm.DLRMModel, with the input schema handed to the model: DLRMModel infers it from its input blocks, and
    # without continuous features it has none, so a list feature (``name__values``/``name__offsets``) is
    # never made ragged and its embedding table is silently pruned at build time.
    body = mm.DLRMBlock(
        schema,
        embedding_dim=settings.embedding_dim,
        bottom_block=mm.MLPBlock(list(settings.bottom_dims)),
        top_block=mm.MLPBlock(list(settings.top_dims)),
    )
    model = mm.Model(body, parse_prediction_blocks(schema, mm.BinaryClassificationTask(TARGET)),
                     schema=schema.without([TARGET]))
    model.compile(
        optimizer=make_optimizer(settings.optimizer, settings.learning_rate),
        run_eagerly=False,
        metrics=[tf.keras.metrics.AUC(name="auc")],
    )
    return model


def validation_metrics(model: Any, valid: Any, batch_size_rows: int) -> dict[str, float]:
    """AUC and log loss on every validation row (no ``drop_last``: a short last batch is fine here)."""
    import merlin.models.tf as mm

    evaluated = model.evaluate(mm.Loader(valid, batch_size=batch_size_rows, shuffle=False), return_dict=True,
                               verbose=0)
    return {"auc": float(evaluated["auc"]), "loss": float(evaluated["loss"])}


def load_dlrm(path: Any) -> Any:
    """Reload an exported DLRM (merlin.models.tf must be imported for its custom layers)."""
    quiet_tensorflow()
    import merlin.models.tf  # noqa: F401
    import tensorflow as tf

    return tf.keras.models.load_model(str(path))


@stage("fit_ranking")
def fit_ranking(config: Config, paths: RunPaths) -> dict[str, Any]:
    settings = config.ranking
    data = fit_data(paths.train, paths.valid, config.transform.part_size,
                    lambda train: train.schema.without(RAW_ID_COLUMNS), settings.seed)
    schema, valid, rows = data.schema, data.valid, data.train_rows
    model = build_dlrm(schema, settings)
    trained = fit_model(model, data, settings, f"fit_ranking ({paths.train})")
    losses = trained["loss_per_epoch"]
    log.info("DLRM loss per epoch: %s", losses)
    metrics = validation_metrics(model, valid, settings.batch_size_rows)
    log.info("validation: %s", metrics)

    paths.fresh(paths.ranking)
    # Scoring only runs the model: without the optimizer's two moment slots per weight the SavedModel is a third
    # of the size (at 1M users the user table alone is 256 MB, its slots 512 MB).
    model.save(str(paths.dlrm), include_optimizer=False)
    return {
        "metrics": {"keras_auc_all_validation_rows": metrics["auc"], "loss": metrics["loss"]},
        "metrics_definition": "Keras' AUC (200-threshold approximation) and loss over every validation row; the "
                              "report's AUC (evaluate) is exact, on the sampled validation users' rows",
        "train_rows": rows,
        **trained,
        "input_features": schema.without([TARGET]).column_names,
        "dlrm": str(paths.dlrm),
    }
