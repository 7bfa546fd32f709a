"""The search spaces of ``tfmf tune --quick``: every model's key hyperparameters, in one place.

Each entry names a field of the model's Config dataclass (``model.<field>``) or of
:class:`~tfmf.config.TrainConfig` (``train.<field>``), the dataclasses that hold every default.
A range is either absolute (``min``/``max``) or relative to the starting config's own value
(``around: [low, high]`` multiplies it), so a range like the learning rate's follows whatever
optimizer and scale the config uses instead of repeating its default here. Every range contains
the value of the shipped ``configs/ml100k_<model>.yaml`` (``tests/test_tune_quick.py`` checks
it), so a search's first trial is the starting config and the search can only report a config
that validated at least as well.

``epochs: early_stopping`` means the epoch count is not searched: each trial trains up to the
config's ``train.epochs`` with early stopping and restore_best on the validation part, and the
chosen config takes the best trial's best epoch. That is only right for a constant learning
rate; with a schedule (cosine, step, ...) the epoch count shapes the decay, so it becomes an
ordinary searched hyperparameter (``EPOCHS_AROUND`` of the config's value) instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tfmf.errors import ConfigError

#: Relative range of ``train.epochs`` when it is searched (learning-rate schedules).
EPOCHS_AROUND = (0.5, 2.0)
#: Early-stopping patience of a trial: this share of its epochs, at least ``MIN_PATIENCE``.
PATIENCE_SHARE = 0.1
MIN_PATIENCE = 3


@dataclass(frozen=True)
class QuickSpace:
    """One model's quick search space.

    Attributes:
      params: hp name -> spec: ``{type: float|int|choice, min, max | around, log, values}``.
      epochs: ``fixed`` (not a training-length model, or the count is a model field in
        ``params``) or ``early_stopping`` (see the module docstring).
    """

    params: dict[str, dict] = field(default_factory=dict)
    epochs: str = "fixed"


def _lr(low: float = 0.2, high: float = 5.0) -> dict:
    return {"type": "float", "around": [low, high], "log": True}


#: model name -> its quick space. Models without an entry (popularity) have nothing to tune.
QUICK_SPACES: dict[str, QuickSpace] = {
    "bias_baseline": QuickSpace({
        "model.reg_user": {"type": "float", "min": 0.5, "max": 100.0, "log": True},
        "model.reg_item": {"type": "float", "min": 0.5, "max": 100.0, "log": True},
    }),
    "ease": QuickSpace({
        # The optimal penalty grows with the number of users (it competes with the Gram
        # diagonal, the item counts), so ML-100K's few hundred says little about other data.
        "model.l2": {"type": "float", "min": 1.0, "max": 30_000.0, "log": True},
    }),
    "ials": QuickSpace({
        # A choice, not a range: an ALS sweep costs O(k^3) per row, and 256 factors already
        # take minutes per fit on ML-100K-sized data with two cores.
        "model.factors": {"type": "choice", "values": [16, 32, 64, 128]},
        "model.regularization": {"type": "float", "min": 0.3, "max": 3_000.0, "log": True},
        # Confidence 1 + alpha * r: play counts want a far smaller alpha than 0/1 data.
        "model.alpha": {"type": "float", "min": 0.03, "max": 100.0, "log": True},
    }),
    "als": QuickSpace({
        "model.factors": {"type": "choice", "values": [8, 16, 32, 64, 128]},
        "model.regularization": {"type": "float", "min": 0.01, "max": 1.0, "log": True},
    }),
    "bayesian_mf": QuickSpace({
        "model.factors": {"type": "choice", "values": [10, 25, 50, 100]},
        "model.noise_precision": {"type": "float", "min": 0.5, "max": 5.0, "log": True},
    }),
    "mf": QuickSpace({
        "model.l2": {"type": "float", "min": 0.003, "max": 0.3, "log": True},
        "model.init_stddev": {"type": "float", "min": 0.003, "max": 0.3, "log": True},
        "train.learning_rate": _lr(),
    }, epochs="early_stopping"),
    "biased_mf": QuickSpace({
        "model.l2": {"type": "float", "min": 0.003, "max": 0.3, "log": True},
        "model.init_stddev": {"type": "float", "min": 0.003, "max": 0.3, "log": True},
        "train.learning_rate": _lr(),
    }, epochs="early_stopping"),
    "mult_vae": QuickSpace({
        "model.dropout": {"type": "float", "min": 0.0, "max": 0.8},
        # beta, the KL weight the anneal ends at
        "model.anneal_cap": {"type": "float", "min": 0.01, "max": 1.0, "log": True},
        "train.learning_rate": _lr(0.3, 3.0),
    }, epochs="early_stopping"),
    "mult_dae": QuickSpace({
        "model.dropout": {"type": "float", "min": 0.0, "max": 0.8},
        "model.lam": {"type": "float", "min": 1e-7, "max": 1e-2, "log": True},
        "train.learning_rate": _lr(0.3, 3.0),
    }, epochs="early_stopping"),
}


def quick_space(model_name: str) -> QuickSpace:
    """The quick space of ``model_name``.

    Raises:
      ConfigError: (key ``model.name``) the model has no quick space; names those that do.
    """
    if model_name not in QUICK_SPACES:
        raise ConfigError(f"model {model_name!r} has no hyperparameters for tune --quick; "
                          f"models with a quick search space: {', '.join(sorted(QUICK_SPACES))}",
                          key="model.name")
    return QUICK_SPACES[model_name]


def resolve(space: QuickSpace, owner_values: dict[str, object], *, schedule: str,
            epochs: int) -> tuple[dict[str, dict], bool]:
    """The space as plain ``tune.space`` entries (absolute ranges) for one starting config.

    Args:
      space: the model's quick space.
      owner_values: hp name -> the starting config's value (for ``around`` ranges).
      schedule: the config's ``train.schedule`` (epochs are searched, not early-stopped,
        unless it is constant).
      epochs: the config's ``train.epochs``.

    Returns:
      ``(entries, early_stopping)``: the ``tune.space`` dict, and whether trials select their
      epoch count by early stopping.

    Raises:
      ConfigError: an ``around`` range whose base value is not a positive number.
    """
    out: dict[str, dict] = {}
    for name, raw in space.params.items():
        spec = dict(raw)
        if "around" in spec:
            lo, hi = spec.pop("around")
            base = owner_values.get(name)
            if isinstance(base, bool) or not isinstance(base, (int, float)) or base <= 0:
                raise ConfigError(f"the quick search range of {name} is relative to the "
                                  f"config's value, which must be a positive number (got "
                                  f"{base!r})", key=name)
            spec["min"], spec["max"] = base * lo, base * hi
            if spec.get("type") == "int":
                spec["min"], spec["max"] = max(1, int(round(spec["min"]))), int(round(spec["max"]))
        out[name] = spec
    early = space.epochs == "early_stopping"
    if early and schedule != "constant":
        lo, hi = EPOCHS_AROUND
        out["train.epochs"] = {"type": "int", "min": max(1, int(round(epochs * lo))),
                               "max": max(2, int(round(epochs * hi)))}
        early = False
    return out, early


def patience(epochs: int) -> int:
    """Early-stopping patience of a trial that may train ``epochs`` epochs."""
    return max(MIN_PATIENCE, int(round(PATIENCE_SHARE * epochs)))


__all__ = ["QUICK_SPACES", "QuickSpace", "quick_space", "resolve", "patience",
           "EPOCHS_AROUND"]
