"""Evaluation: rating metrics (rating.py), ranking metrics (ranking.py), model selection."""
from __future__ import annotations

# The metric names live with EvalConfig (the config layer is below evaluation).
from tfmf.config import RANKING_METRICS, RATING_METRICS  # noqa: F401


def evaluate(model, test, eval_config=None) -> dict[str, float]:
    """Scores a fitted model on a test fold, choosing the protocol from the fold's type.

    Args:
      model: a fitted Recommender.
      test: an InteractionData of held-out ratings (rating metrics for explicit models,
        ranking metrics over known users otherwise) or a StrongSplit-like object with
        ``fold_in``/``target`` (ranking metrics for held-out users).
      eval_config: a tfmf.config.EvalConfig (None: defaults).

    Returns:
      Flat metric dict, e.g. ``{"rmse": 0.9}`` or ``{"ndcg@100": 0.44, "recall@20": ..}``.
    """
    from tfmf.config import EvalConfig

    cfg = eval_config or EvalConfig()
    rating_metrics = [m for m in cfg.metrics if m in RATING_METRICS]
    if hasattr(test, "target"):
        from tfmf.evaluation.ranking import evaluate_strong

        return evaluate_strong(model, test, cfg)
    out: dict[str, float] = {}
    if rating_metrics and model.task in ("explicit", "both") and not test.implicit:
        from tfmf.evaluation.rating import evaluate_ratings

        res = evaluate_ratings(model, test, clip=cfg.clip_predictions, batch_size=65536)
        out.update({k: v for k, v in res.items() if k in rating_metrics})
    if len(out) < len(cfg.metrics):
        from tfmf.evaluation.ranking import evaluate_known_users

        out.update(evaluate_known_users(model, test, cfg))
    return out


def validation_metrics(model, validation, batch_size: int = 1024) -> dict[str, float]:
    """The per-epoch validation metrics of a fit, keys prefixed ``val_``.

    Args:
      model: the Recommender being fitted.
      validation: validation ratings (an InteractionData; RMSE/MAE, clipped, for explicit
        models), or validation users (a StrongSplit) / held-out items of known users for
        implicit models (NDCG@100, Recall@20).
      batch_size: users scored per batch.
    """
    from tfmf.config import EvalConfig

    explicit = (model.task in ("explicit", "both") and not hasattr(validation, "target")
                and not validation.implicit)
    if explicit:
        cfg = EvalConfig(metrics=["rmse", "mae"], batch_size=batch_size)
    else:
        cfg = EvalConfig(metrics=["ndcg", "recall"], ks=[20, 100], batch_size=batch_size)
    res = evaluate(model, validation, cfg)
    keys = ("rmse", "mae") if explicit else ("ndcg@100", "recall@20")
    return {f"val_{k}": res[k] for k in keys if k in res}
