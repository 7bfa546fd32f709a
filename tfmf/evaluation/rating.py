"""Rating-prediction metrics: RMSE and MAE, computed in batches."""
from __future__ import annotations

import numpy as np

from tfmf.data.interactions import InteractionData


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    d = np.asarray(y_true, np.float64) - np.asarray(y_pred, np.float64)
    return float(np.sqrt(np.mean(d * d)))


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y_true, np.float64) - np.asarray(y_pred, np.float64))))


def predict_batched(model, users: np.ndarray, items: np.ndarray, batch_size: int = 65536,
                    timestamps: np.ndarray | None = None) -> np.ndarray:
    """``model.predict`` over (user, item) pairs in chunks (bounded memory); a model whose
    ``uses_timestamps`` is true also gets the queries' ``timestamps`` (timeSVD++ terms)."""
    timed = timestamps is not None and getattr(model, "uses_timestamps", False)
    out = np.empty(len(users), np.float32)
    for s in range(0, len(users), batch_size):
        part = slice(s, s + batch_size)
        out[part] = (model.predict(users[part], items[part], timestamps=timestamps[part]) if timed
                     else model.predict(users[part], items[part]))
    return out


def evaluate_ratings(model, test: InteractionData, clip: bool = True,
                     batch_size: int = 65536) -> dict[str, float]:
    """RMSE and MAE of ``model`` on ``test``; predictions clipped to the rating scale.

    Args:
      model: a fitted explicit Recommender.
      test: held-out ratings in the training id space.
      clip: clip predictions to ``test.rating_scale`` (if declared).
      batch_size: pairs per predict call.

    Returns:
      ``{"rmse": .., "mae": ..}``.
    """
    pred = predict_batched(model, test.users, test.items, batch_size, test.timestamps)
    if clip and test.rating_scale is not None:
        pred = np.clip(pred, *test.rating_scale)
    return {"rmse": rmse(test.values, pred), "mae": mae(test.values, pred)}
