"""The one model registry: name -> Recommender class (each carrying its Config dataclass)."""
from __future__ import annotations

import importlib

_MODELS: dict[str, type] = {}
# Modules whose import registers models; imported lazily so `tfmf --help` does not load TF.
_MODEL_MODULES = ("tfmf.models.baselines", "tfmf.models.ease", "tfmf.models.mf", "tfmf.models.vae",
                  "tfmf.models.recvae", "tfmf.models.als", "tfmf.models.bayesian")


def register(name: str):
    """Class decorator: ``@register("biased_mf")`` on a Recommender subclass."""

    def deco(cls):
        if name in _MODELS and _MODELS[name] is not cls:
            raise ValueError(f"model name {name!r} registered twice")
        cls.name = name
        _MODELS[name] = cls
        return cls

    return deco


def _load_all() -> None:
    for mod in _MODEL_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            # A model family not written yet is simply absent; any other import error is real.
            if exc.name != mod:
                raise


def get(name: str) -> type:
    """The Recommender class registered as ``name``; KeyError lists the known names."""
    if name not in _MODELS:
        _load_all()
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(names())}")
    return _MODELS[name]


def names() -> list[str]:
    _load_all()
    return sorted(_MODELS)


def create(name: str, config=None):
    """A fresh, unfitted Recommender ``name`` (``config``: its Config instance, None: defaults)."""
    cls = get(name)
    return cls(config if config is not None else cls.config_class())
