"""Search spaces: parsed from ``tune.space``, declared on KerasTuner ``HyperParameters``,
applied back onto a :class:`~tfmf.config.RunConfig`, and narrowed for two-stage searches.

A space entry addresses one field of the model's Config or of ``TrainConfig``::

    tune:
      space:
        model.l2:            {type: float, min: 1.0e-4, max: 0.3, log: true}
        model.embedding_dim: {type: choice, values: [16, 32, 64]}
        train.learning_rate: {type: float, min: 1.0e-3, max: 0.05, log: true}
        train.batch_size:    {type: int, min: 256, max: 4096, log: true}
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from tfmf.config import RunConfig, TrainConfig, config_from_dict
from tfmf.errors import ConfigError

#: Space sections and the config dataclass each name is checked against.
SECTIONS = ("model", "train")
#: The hyperparameter KerasTuner's Hyperband oracle sets per trial; mapped onto train.epochs.
HYPERBAND_EPOCHS = "tuner/epochs"

#: Search spaces used when ``tune.space`` is empty, per model (only fields the model has).
DEFAULT_SPACES: dict[str, dict[str, dict]] = {
    "bias_baseline": {
        "model.reg_user": {"type": "float", "min": 0.5, "max": 50.0, "log": True},
        "model.reg_item": {"type": "float", "min": 0.5, "max": 50.0, "log": True},
    },
    "mf": {
        "model.embedding_dim": {"type": "choice", "values": [16, 32, 64, 128]},
        "model.l2": {"type": "float", "min": 1e-4, "max": 1.0, "log": True},
        "model.init_stddev": {"type": "float", "min": 0.01, "max": 0.5, "log": True},
        "train.learning_rate": {"type": "float", "min": 1e-3, "max": 0.05, "log": True},
    },
    "biased_mf": {
        "model.embedding_dim": {"type": "choice", "values": [16, 32, 64, 128]},
        "model.l2": {"type": "float", "min": 1e-4, "max": 1.0, "log": True},
        "model.gramian": {"type": "float", "min": 1e-4, "max": 1.0, "log": True},
        "train.learning_rate": {"type": "float", "min": 1e-3, "max": 0.05, "log": True},
    },
    "mult_vae": {
        "model.dropout": {"type": "float", "min": 0.0, "max": 0.8},
        "model.anneal_cap": {"type": "float", "min": 0.05, "max": 1.0},
        "model.total_anneal_steps": {"type": "int", "min": 1000, "max": 200_000, "log": True},
        "train.learning_rate": {"type": "float", "min": 1e-4, "max": 1e-2, "log": True},
    },
}

_SPEC_KEYS = {"type", "min", "max", "log", "values"}


@dataclass
class ParamSpec:
    """One tunable hyperparameter.

    Attributes:
      name: dotted name, ``model.<field>`` or ``train.<field>`` (also the KerasTuner hp name).
      type: float | int | choice.
      min / max: numeric bounds (inclusive).
      log: sample uniformly in log space (needs min > 0).
      values: the candidates of a choice.
    """

    name: str
    type: str
    min: float | None = None
    max: float | None = None
    log: bool = False
    values: list = field(default_factory=list)

    @property
    def section(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def field(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def numeric(self) -> bool:
        return self.type in ("float", "int")

    def to_dict(self) -> dict:
        if self.type == "choice":
            return {"type": "choice", "values": list(self.values)}
        return {"type": self.type, "min": self.min, "max": self.max, "log": self.log}


def space_dict(cfg: RunConfig) -> dict[str, dict]:
    """``tune.space`` or, when empty, the model's default space."""
    if cfg.tune.space:
        return cfg.tune.space
    if cfg.model_name not in DEFAULT_SPACES:
        raise ConfigError(f"no default search space for model {cfg.model_name!r}; "
                          "set tune.space", key="tune.space")
    fields = {f"model.{f.name}" for f in dataclasses.fields(cfg.model)}
    fields |= {f"train.{f.name}" for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in DEFAULT_SPACES[cfg.model_name].items() if k in fields}


def parse_space(cfg: RunConfig) -> list[ParamSpec]:
    """Validates the search space against the model Config and TrainConfig dataclasses.

    Both ends of a numeric range and every choice are applied to ``cfg`` and validated, so a
    range the model would reject (e.g. negative l2) fails here, before any trial runs.

    Args:
      cfg: the run config whose ``tune.space`` (or default space) is parsed.

    Returns:
      The specs, in the order given.

    Raises:
      ConfigError: naming ``tune.space.<name>``.
    """
    specs = []
    for name, raw in space_dict(cfg).items():
        key = f"tune.space.{name}"
        if not isinstance(raw, dict):
            raise ConfigError("must be a mapping {type, min, max, log, values}", key=key)
        unknown = sorted(set(raw) - _SPEC_KEYS)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown}; known: {sorted(_SPEC_KEYS)}", key=key)
        section, _, fname = name.partition(".")
        if section not in SECTIONS or not fname:
            raise ConfigError("name must be model.<field> or train.<field>", key=key)
        owner = cfg.model if section == "model" else cfg.train
        known = [f.name for f in dataclasses.fields(owner)]
        if fname not in known:
            raise ConfigError(f"{type(owner).__name__} has no field {fname!r} "
                              f"(fields: {', '.join(known)})", key=key)
        kind = raw.get("type", "choice" if "values" in raw else "float")
        if kind == "choice":
            values = raw.get("values")
            if not isinstance(values, list) or not values:
                raise ConfigError("a choice needs a non-empty list 'values'", key=key)
            spec = ParamSpec(name, "choice", values=list(values))
            probes = spec.values
        elif kind in ("float", "int"):
            lo, hi, log = raw.get("min"), raw.get("max"), bool(raw.get("log", False))
            numbers = (int,) if kind == "int" else (int, float)
            if not all(isinstance(v, numbers) and not isinstance(v, bool) for v in (lo, hi)):
                raise ConfigError(f"a {kind} range needs numeric 'min' and 'max'"
                                  + (" (integers)" if kind == "int" else ""), key=key)
            if not lo < hi:
                raise ConfigError(f"needs min < max, got [{lo}, {hi}]", key=key)
            if log and lo <= 0:
                raise ConfigError("log sampling needs min > 0", key=key)
            spec = ParamSpec(name, kind, float(lo) if kind == "float" else lo,
                             float(hi) if kind == "float" else hi, log)
            probes = [spec.min, spec.max]
        else:
            raise ConfigError(f"type must be float, int or choice, got {kind!r}", key=key)
        for value in probes:
            try:
                apply_values(cfg, {name: value})
            except ConfigError as exc:
                raise ConfigError(f"value {value!r} is invalid: {exc.reason}", key=key) from None
        specs.append(spec)
    if not specs:
        raise ConfigError("the search space is empty", key="tune.space")
    return specs


def current_value(cfg: RunConfig, spec: ParamSpec):
    """The config's own value of ``spec``'s field, or None when it lies outside the space."""
    owner = cfg.model if spec.section == "model" else cfg.train
    value = getattr(owner, spec.field)
    if spec.type == "choice":
        return value if value in spec.values else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if spec.type == "int" and value != int(value):
        return None
    return value if spec.min <= value <= spec.max else None


def declare(hp, specs: list[ParamSpec], base: RunConfig | None = None) -> None:
    """Declares ``specs`` on a KerasTuner ``HyperParameters`` object.

    Args:
      hp: the HyperParameters to add to.
      specs: the space.
      base: if given, each hp's default is the config's own value (when inside the space), so
        the defaults describe the starting config (see ``tuner.BaseConfigFirst``).
    """
    for s in specs:
        default = current_value(base, s) if base is not None else None
        if s.type == "choice" or s.min == s.max:
            values = s.values if s.type == "choice" else [s.min]
            if len(values) == 1:
                hp.Fixed(s.name, values[0])
            elif all(isinstance(v, bool) for v in values):
                # hp.Choice would store True/False as 1/0, which bool fields reject.
                hp.Boolean(s.name, default=values[0] if default is None else default)
            else:
                hp.Choice(s.name, values, default=default)
        elif s.type == "int":
            hp.Int(s.name, int(s.min), int(s.max), sampling="log" if s.log else "linear",
                   default=None if default is None else int(default))
        else:
            hp.Float(s.name, float(s.min), float(s.max), sampling="log" if s.log else "linear",
                     default=None if default is None else float(default))


def apply_values(cfg: RunConfig, values: dict[str, Any]) -> RunConfig:
    """A validated copy of ``cfg`` with hyperparameter values set.

    Args:
      cfg: the base run config (not modified).
      values: hp name -> value; ``tuner/epochs`` sets ``train.epochs``, other ``tuner/*``
        bookkeeping entries of Hyperband are ignored.

    Returns:
      A new RunConfig, validated like a YAML file (ConfigError names the dotted key).
    """
    raw = copy.deepcopy(cfg.to_dict())
    for name, value in values.items():
        if name == HYPERBAND_EPOCHS:
            raw["train"]["epochs"] = int(value)
            continue
        if name.startswith("tuner/"):
            continue
        section, _, fname = name.partition(".")
        raw[section][fname] = value
    return config_from_dict(raw)


def narrow(specs: list[ParamSpec], top_values: list[dict], margin: float = 0.5,
           min_width: float = 0.1) -> list[ParamSpec]:
    """Ranges around the best trials, for the second stage of a two-stage search.

    Per numeric hp: the [min, max] of ``top_values`` widened on both sides by ``margin`` times
    its width, in log space for log-sampled hps, never narrower than ``min_width`` of the
    original range and clipped to it. Choices keep the values the top trials used.

    Args:
      specs: the first-stage space.
      top_values: hp values of the best trials (best first).
      margin: relative widening of each side.
      min_width: floor on the new width as a share of the old one (so a range never collapses).

    Returns:
      New specs (same names and types).
    """
    out = []
    for s in specs:
        seen = [v[s.name] for v in top_values if s.name in v]
        if not seen:
            out.append(s)
            continue
        if s.type == "choice":
            out.append(ParamSpec(s.name, "choice", values=[c for c in s.values if c in seen]))
            continue
        f = math.log if s.log else float
        inv = math.exp if s.log else float
        a0, b0 = f(s.min), f(s.max)
        a, b = f(min(seen)), f(max(seen))
        width = max(b - a, min_width * (b0 - a0))
        mid = (a + b) / 2
        a, b = mid - width / 2 - margin * width, mid + width / 2 + margin * width
        lo, hi = max(s.min, inv(a)), min(s.max, inv(b))
        if s.type == "int":
            lo, hi = int(math.floor(lo)), int(math.ceil(hi))
        out.append(ParamSpec(s.name, s.type, lo, hi, s.log))
    return out


__all__ = ["ParamSpec", "DEFAULT_SPACES", "HYPERBAND_EPOCHS", "parse_space", "declare",
           "current_value",
           "apply_values", "narrow", "space_dict"]
