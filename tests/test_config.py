"""Configs: overrides, validation, hashing."""

import pytest

from netalchemy import config as C


def test_overrides_parse_by_type_and_apply_together():
    cfg = C.override(C.Config(), ["train.steps=100", "train.eval_every=50", "optim.lr=3e-3",
                                  "model.hidden=[64, 32]", "model.batch_norm=true", "seeds.vary=init"])
    assert cfg.train.steps == 100 and cfg.train.eval_every == 50 and cfg.optim.lr == 3e-3
    assert cfg.model.hidden == (64, 32) and cfg.model.batch_norm is True and cfg.seeds.vary == ("init",)
    assert C.override(C.Config(), ["model.hidden="]).model.hidden == ()
    assert C.override(C.Config(), ["train.steps=1e3"]).train.steps == 1000


@pytest.mark.parametrize("assignment, message", [
    ("foo=1", "unknown config key 'foo'"),
    ("optim.lrr=1", "unknown config key 'optim.lrr'"),
    ("optim.lr=abc", "cannot read 'abc' as float"),
    ("optim.lr=-1", "positive"),
    ("optim.lr=nan", "cannot read"),
    ("train.steps=2.5", "as int"),
    ("train=3", "is a section"),
    ("optim.name=lbfgs", "optim.name must be one of"),
    ("seeds.vary=init,foo", "unknown stream 'foo'"),
    ("train.steps=7", "multiple of train.eval_every"),
    ("model.dropout=1", "model.dropout must be in [0, 1)"),
    ("model.batch_norm=maybe", "as bool"),
    ("noequals", "expected key=value"),
])
def test_bad_overrides_are_one_line_errors(assignment, message):
    with pytest.raises(C.ConfigError) as info:
        C.override(C.Config(), [assignment])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_hash_is_stable_and_round_trip_is_exact():
    a = C.override(C.Config(), ["optim.lr=0.003"])
    assert C.config_hash(a) == C.config_hash(C.override(C.Config(), ["optim.lr=3e-3"]))
    assert C.config_hash(a) != C.config_hash(C.Config())
    assert C.from_dict(C.to_dict(a)) == a
    assert len(C.config_hash(a)) == 12
    with pytest.raises(C.ConfigError):
        C.from_dict({"nope": 1})
