"""Run workflows: which folds a run builds, and train-only ('none') splits."""
import pytest

import tfmf  # noqa: F401
from tfmf import runner
from tfmf.config import load_config
from tfmf.data.sample import load_sample
from tfmf.errors import ConfigError


def cfg(*overrides):
    return load_config(None, overrides=["model.name=bias_baseline", *overrides])


def test_first_split_is_the_first_of_all_splits():
    data = load_sample()
    c = cfg("data.split.kind=kfold", "data.split.n_folds=3")
    train0, test0 = runner.first_split(c, data)
    all_folds = runner.splits_for(c, data)
    assert len(all_folds) == 3
    assert (train0.nnz, test0.nnz) == (all_folds[0][0].nnz, all_folds[0][1].nnz)


def test_none_split_trains_on_everything_and_cv_refuses_it(tmp_path):
    data = load_sample()
    c = cfg("data.split.kind=none")
    train, test = runner.first_split(c, data)
    assert train.nnz == data.nnz and test is None
    res = runner.train(c, str(tmp_path / "run"), data=data)
    assert res.metrics == {} and (tmp_path / "run" / "metrics.json").exists()
    with pytest.raises(ConfigError) as ei:
        runner.cross_validate(c, data=data)
    assert ei.value.key == "data.split.kind"
