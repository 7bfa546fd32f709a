"""Config dataclasses: strict keys/types, overrides, YAML round trip."""
import textwrap

import pytest

import tfmf  # noqa: F401
from tfmf.config import (DataConfig, RunConfig, TrainConfig, apply_override, config_from_dict,
                         load_config)
from tfmf.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_defaults_come_from_dataclasses():
    cfg = load_config(None)
    assert cfg.train == TrainConfig()
    assert cfg.data == DataConfig()
    assert cfg.model_name == RunConfig.model_name


@pytest.mark.parametrize("text,key", [
    ("train: {epochz: 3}\n", "train.epochz"),
    ("train: {epochs: three}\n", "train.epochs"),
    ("train: {learning_rate: -0.1}\n", "train.learning_rate"),
    ("train: {optimizer: rmsprop}\n", "train.optimizer"),
    ("train: {steps_per_execution: 0}\n", "train.steps_per_execution"),
    ("train: {deterministic: 1}\n", "train.deterministic"),
    ("data: {split: {kind: weird}}\n", "data.split.kind"),
    ("data: {split: {n_folds: 1}}\n", "data.split.n_folds"),
    ("data: {columns: {usr: a}}\n", "data.columns"),
    ("eval: {ks: [10, 0]}\n", "eval.ks"),
    ("eval: {metrics: [auc]}\n", "eval.metrics"),
    ("model: {name: no_such_model}\n", "model.name"),
    ("model: {name: bias_baseline, reg_user: -1}\n", "model.reg_user"),
    ("model: {name: bias_baseline, hidden: 3}\n", "model.hidden"),
    ("bogus: 1\n", "bogus"),
])
def test_errors_name_the_key_and_file(tmp_path, text, key):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert ei.value.key == key
    assert str(p) in str(ei.value) and key in str(ei.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = write(tmp_path, "train: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_config(p)


def test_overrides_apply_before_validation(tmp_path):
    p = write(tmp_path, "train: {epochs: 3}\n")
    cfg = load_config(p, overrides=["train.epochs=7", "train.learning_rate=0.5",
                                    "data.split.kind=official", "eval.ks=[5, 10]"])
    assert cfg.train.epochs == 7 and cfg.train.learning_rate == 0.5
    assert cfg.data.split.kind == "official" and cfg.eval.ks == [5, 10]
    with pytest.raises(ConfigError) as ei:
        load_config(p, overrides=["train.epochs=-2"])
    assert ei.value.key == "train.epochs"
    with pytest.raises(ConfigError):
        apply_override({}, "no-equals-sign")


def test_int_accepted_for_float_but_not_bool_for_int():
    cfg = config_from_dict({"train": {"learning_rate": 1}})
    assert isinstance(cfg.train.learning_rate, float)
    with pytest.raises(ConfigError):
        config_from_dict({"train": {"epochs": True}})


def test_yaml_round_trip(tmp_path):
    cfg = load_config(None, overrides=["model.name=bias_baseline", "model.reg_item=3.5",
                                       "train.epochs=4"])
    p = tmp_path / "round.yaml"
    p.write_text(cfg.to_yaml())
    again = load_config(p)
    assert again.to_dict() == cfg.to_dict()
    assert again.model.reg_item == 3.5
