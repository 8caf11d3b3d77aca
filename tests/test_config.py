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
    ("train.steps=1e99", "train.steps must be in [1, 2147483647], got 1e+99"),
    ("train.eval_every=1e99", "train.eval_every must be in [1, 2147483647]"),
    ("train.steps=0", "train.steps must be in [1, 2147483647], got 0"),
    ("train.steps=-5", "got -5"),
    ("train.steps=1e400", "cannot read '1e400' as int"),
    ("train.chunk_steps=2147483648", "train.chunk_steps must be in [1, 2147483647]"),
    ("train.batch_size=1e16", "train.batch_size must be in [1, 2147483647], got 1e+16"),
    ("train.batch_size=1.5", "cannot read '1.5' as int"),
    ("model.hidden=64,1e10", "model.hidden width must be in [1, 2147483647], got 10000000000"),
    ("model.hidden=64,0", "model.hidden width must be in [1, 2147483647], got 0"),
    ("seeds.n=0", "seeds.n must be in [1, 2147483647]"),
    ("seeds.n=1e20", "seeds.n must be in [1, 2147483647], got 1e+20"),
    ("seeds.start=2147483647", "seeds.start must be in [0, 2147483616]"),
    ("optim.warmup_steps=-1", "optim.warmup_steps must be in [0, 2147483647]"),
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


def test_steps_need_not_be_a_multiple_of_the_evaluation_interval():
    cfg = C.override(C.Config(), ["train.steps=100"])  # default eval_every is 250
    assert cfg.train.steps == 100 and cfg.train.eval_every == 250
    assert C.override(C.Config(), ["train.steps=600", "train.eval_every=250"]).train.steps == 600


def test_large_integers_are_read_exactly():
    assert C.override(C.Config(), ["train.steps=2147483647"]).train.steps == 2**31 - 1
    assert C.override(C.Config(), ["seeds.start=2147483615"]).seeds.start == 2**31 - 33  # last seed 2**31 - 1


@pytest.mark.parametrize("make", [
    lambda: C.TrainConfig(steps=1.5),
    lambda: C.TrainConfig(steps=100.0),
    lambda: C.TrainConfig(eval_every=True),
    lambda: C.ModelConfig(hidden=(64, 2.0)),
    lambda: C.SeedsConfig(n="32"),
])
def test_counts_must_be_integers_from_python_too(make):
    with pytest.raises(C.ConfigError, match="must be an integer"):
        make()


def test_numpy_integers_are_counts():
    import numpy as np

    assert C.TrainConfig(steps=np.int64(500), eval_every=np.int32(100)).steps == 500


def test_choices_table_drives_validation():
    keys = C.all_keys(C.Config())
    for key, options in C.CHOICES.items():
        assert key in keys, key
        default = keys[key]
        assert (set(default) <= set(options)) if isinstance(default, tuple) else default in options
        for option in options:  # every listed value is accepted ...
            C.override(C.Config(), [f"{key}={option}"])
        with pytest.raises(C.ConfigError) as info:  # ... and one not listed is refused, naming the allowed ones
            C.override(C.Config(), [f"{key}=bogus"])
        assert all(o in str(info.value) for o in options)


@pytest.mark.parametrize("assignment, suggestion", [
    ("optim.lrr=1", "did you mean 'optim.lr'?"),
    ("opitm.lr=1", "did you mean 'optim.lr'?"),
    ("lr=1", "did you mean 'optim.lr'?"),
    ("train.step=10", "did you mean 'train.steps'?"),
    ("seeds.nn=2", "did you mean 'seeds.n'?"),
    ("optim.name=adma", "did you mean 'adam'?"),
    ("optim.schedule=cosin", "did you mean 'cosine'?"),
    ("model.activation=rleu", "did you mean 'relu'?"),
    ("seeds.vary=init,dropuot", "did you mean 'dropout'?"),
])
def test_typos_get_a_suggestion(assignment, suggestion):
    with pytest.raises(C.ConfigError) as info:
        C.override(C.Config(), [assignment])
    assert str(info.value).endswith(f"({suggestion})")


def test_no_suggestion_when_nothing_is_close():
    with pytest.raises(C.ConfigError) as info:
        C.override(C.Config(), ["zzzzzz=1"])
    assert "did you mean" not in str(info.value)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["train"].update(steps="6000"), "train.steps must be int, got str"),
    (lambda d: d["train"].update(steps=True), "train.steps must be int, got bool"),
    (lambda d: d["optim"].update(lr="fast"), "optim.lr must be float, got str"),
    (lambda d: d["model"].update(hidden=100), "model.hidden must be a list, got int"),
    (lambda d: d["model"].update(hidden=[100, "x"]), "model.hidden must be int, got str"),
    (lambda d: d["model"].update(batch_norm="yes"), "model.batch_norm must be bool, got str"),
    (lambda d: d.update(seeds=[1, 2]), "seeds must be a mapping, got list"),
    (lambda d: d["data"].update(nope=1), "unknown config key 'data.nope'"),
])
def test_from_dict_refuses_wrong_types(edit, message):
    data = C.to_dict(C.Config())
    edit(data)
    with pytest.raises(C.ConfigError) as info:
        C.from_dict(data)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_data_classes_is_a_config_key():
    assert C.Config().data.classes == ""
    assert C.override(C.Config(), ["data.classes=0,6"]).data.classes == "0,6"
