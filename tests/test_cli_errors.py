"""The command line on bad input: one stderr line, exit 2 (a full disk: exit 1), nothing written;
"did you mean" suggestions; help that lists every choice; --version; reuse and --force."""

import errno
import types
from pathlib import Path
from importlib import metadata

import pytest

from netalchemy import cli, store, sweep
from netalchemy import config as config_lib


def run_cli(argv, capsys, monkeypatch):
    """cli.main in this process, leaving the test process's JAX devices as they are."""
    monkeypatch.setattr(cli.devices, "use_cpu_cores", lambda: None)
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, message", [
    (["trian"], "unknown command 'trian'; choose from train, show, run, audit, stability, bench, list (did you mean 'train'?)"),
    (["shwo"], "(did you mean 'show'?)"),
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["run", "chanse"], "unknown experiment 'chanse'; choose from gradcheck"),
    (["run", "chanse"], "(did you mean 'chance'?)"),
    (["run", "gradcheck", "--profile", "tiyn"], "unknown profile 'tiyn'; choose from tiny, quick, full (did you mean 'tiny'?)"),
    (["audit", "--profile", "ful"], "(did you mean 'full'?)"),
    (["bench", "--profile", "quik"], "(did you mean 'quick'?)"),
    (["train", "optim.lrr=1"], "unknown config key 'optim.lrr'"),
    (["train", "optim.lrr=1"], "(did you mean 'optim.lr'?)"),
    (["train", "lr=1"], "(did you mean 'optim.lr'?)"),
    (["train", "optim.name=adma"], "optim.name must be one of sgd, momentum, nesterov, adam, adamw, rmsprop, got 'adma' (did you mean 'adam'?)"),
    (["train", "train.steps=1e99", "train.eval_every=1e99"], "train.steps must be in [1, 2147483647], got 1e+99"),
    (["train", "train.eval_every=1e99"], "train.eval_every must be in [1, 2147483647], got 1e+99"),
    (["train", "train.steps=1.5"], "train.steps: cannot read '1.5' as int"),
    (["train", "train.chunk_steps=1e10"], "train.chunk_steps must be in [1, 2147483647]"),
    (["train", "train.batch_size=0"], "train.batch_size must be in [1, 2147483647], got 0"),
    (["train", "model.hidden=100,1e12"], "model.hidden width must be in [1, 2147483647]"),
    (["train", "seeds.n=-3"], "seeds.n must be in [1, 2147483647], got -3"),
    (["train", "seeds.n=1e10"], "seeds.n must be in [1, 2147483647], got 10000000000"),
    (["train", "seeds.vary=init,dropuot"], "(did you mean 'dropout'?)"),
    (["train", "oops"], "expected key=value, got 'oops'"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["show", "--csv", "out"], "--csv needs a RUN_DIR"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out is ./runs
    code, out, err = run_cli(argv, capsys, monkeypatch)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("netalchemy: error: ") and message in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [
    config_lib.ConfigError("the sweep needs 7.5 TB, more than this machine's 125 GB of memory"),
    store.StoreError("runs/train/abc/chunks/chunk-0000.npz is damaged (not an npz file); delete it to retrain it"),
])
def test_errors_raised_by_the_engine_are_one_line_exit_2(error, tmp_path, capsys, monkeypatch):
    def refuse(cfg, **kwargs):
        raise error

    monkeypatch.setattr(sweep, "run", refuse)
    code, out, err = run_cli(["train", "--out", str(tmp_path / "runs")], capsys, monkeypatch)
    assert (code, out, err) == (2, "", f"netalchemy: error: {error}\n")


def _enospc():
    raise OSError(errno.ENOSPC, "No space left on device", "runs/train/abc/chunks/chunk-0001.npz")


def _wrapped_enospc():
    try:
        _enospc()
    except OSError as e:
        raise ValueError("checkpoint write failed: runs/train/abc/chunks/chunk-0001.npz") from e


@pytest.mark.parametrize("raise_full", [_enospc, _wrapped_enospc])
def test_a_full_disk_is_one_line_exit_1(raise_full, tmp_path, capsys, monkeypatch):
    def full(cfg, **kwargs):
        raise_full()

    monkeypatch.setattr(sweep, "run", full)
    code, out, err = run_cli(["train", "--out", str(tmp_path / "runs")], capsys, monkeypatch)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("netalchemy: error: no space left") and "chunk-0001.npz" in err and "rerun" in err


def test_store_no_space_is_exit_1_with_its_own_message(tmp_path, capsys, monkeypatch):
    error = store.NoSpace(Path("runs/train/abc/chunks/chunk-0001.npz"), 1, 2)

    def full(cfg, **kwargs):
        raise error

    monkeypatch.setattr(sweep, "run", full)
    code, out, err = run_cli(["train", "--out", str(tmp_path / "runs")], capsys, monkeypatch)
    assert (code, out, err) == (1, "", f"netalchemy: error: {error}\n")
    assert "chunk-0001.npz" in err and "1 of 2 chunks" in err


def test_other_os_errors_are_not_hidden(tmp_path, capsys, monkeypatch):
    def broken(cfg, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(sweep, "run", broken)
    with pytest.raises(OSError):
        run_cli(["train", "--out", str(tmp_path / "runs")], capsys, monkeypatch)


def _fake_sweep(monkeypatch, *, reused):
    calls = []

    def fake_run(cfg, **kwargs):
        calls.append(kwargs)
        return types.SimpleNamespace(reused=reused, finished="2026-12-01T18:03:04+00:00")

    monkeypatch.setattr(sweep, "run", fake_run)
    monkeypatch.setattr(sweep, "format_summary", lambda result: "the summary")
    return calls


def test_a_reused_sweep_says_so(tmp_path, capsys, monkeypatch):
    calls = _fake_sweep(monkeypatch, reused=True)
    code, out, err = run_cli(["train", "--out", "runs", "seeds.n=2"], capsys, monkeypatch)
    run_hash = config_lib.config_hash(config_lib.override(config_lib.Config(), ["seeds.n=2"]))
    assert code == 0 and out.startswith("the summary\n")
    assert err == f"reusing runs/train/{run_hash}, finished 2026-12-01 18:03 UTC; use --force to retrain\n"
    assert not calls[0].get("force", False)


def test_force_retrains(tmp_path, capsys, monkeypatch):
    calls = _fake_sweep(monkeypatch, reused=False)
    code, out, err = run_cli(["train", "--force", "--out", "runs", "seeds.n=2"], capsys, monkeypatch)
    assert code == 0 and err == "" and calls[0]["force"] is True


def test_train_help_lists_every_choice(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--help"])
    assert info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for key, options in config_lib.CHOICES.items():
        line = next(l for l in lines if l.strip().startswith(f"{key} = "))
        assert line.endswith(" | ".join(options)), line


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"netalchemy {metadata.version('netalchemy')}\n"


def test_tiny_verdicts_are_marked_as_a_smoke_test():
    marked = cli.smoke_marked("claim  verdict\nM1     supported", "tiny").splitlines()
    assert marked[0] == marked[-1] == cli.SMOKE_BANNER and "SMOKE TEST" in cli.SMOKE_BANNER
    assert marked[1:-1] == ["claim  verdict", "M1     supported"]
    assert cli.smoke_marked("table", "quick") == "table"


@pytest.mark.parametrize("profile", ["tiny", "quick"])
def test_audit_prints_the_narrow_ledger(profile, tmp_path, capsys, monkeypatch):
    from netalchemy import audit

    ledger = "| claim | verdict | value | 95% CI | experiment |\n|---|---|---|---|---|\n| M1 | supported | 0.357 | — | gradcheck |\n"

    def fake_audit(name, *, root, dataset):
        folder = audit.audit_dir(root, name, dataset)
        folder.mkdir(parents=True)
        (folder / "ledger.md").write_text(ledger)
        (folder / "report.md").write_text("| claim | statement | measured | value | 95% CI | verdict | figure |\n" * 3)
        return folder

    monkeypatch.setattr(audit, "run_audit", fake_audit)
    code, out, _ = run_cli(["audit", "--profile", profile, "--out", str(tmp_path)], capsys, monkeypatch)
    folder = tmp_path / "audit" / profile
    lines = out.strip().splitlines()
    assert code == 0 and "statement" not in out  # not the wide report table
    assert lines[-1] == f"report: {folder / 'report.md'} and {folder / 'report.html'}"
    table = ledger.rstrip("\n").splitlines()
    if profile == "tiny":
        assert lines[:-2] == [cli.SMOKE_BANNER, *table, cli.SMOKE_BANNER]
    else:
        assert lines[:-2] == table


def test_preset_overrides_come_first_and_the_users_win():
    from netalchemy import presets

    for name, overrides in presets.PRESETS.items():
        resolved = cli.with_preset(["optim.lr=3e-3", f"preset={name}", "seeds.n=4"])
        assert resolved == [*overrides, "optim.lr=3e-3", "seeds.n=4"]
        cfg = config_lib.override(config_lib.Config(), resolved)
        assert cfg.optim.lr == 3e-3 and cfg.seeds.n == 4
        assert cfg == config_lib.override(config_lib.override(config_lib.Config(), overrides),
                                          ["optim.lr=3e-3", "seeds.n=4"])
    assert cli.with_preset(["seeds.n=4"]) == ["seeds.n=4"]


@pytest.mark.parametrize("argv, message", [
    (["train", "preset=artcle"], "unknown preset 'artcle' (did you mean 'article'?)"),
    (["train", "preset=article", "preset=article"], "give one preset=NAME, got 2"),
])
def test_bad_presets(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(argv, capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert list(tmp_path.iterdir()) == []


def test_train_help_lists_presets(capsys):
    from netalchemy import presets

    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for name, description in presets.DESCRIPTIONS.items():
        assert f"  {name}: {' '.join(presets.PRESETS[name])}" in out and description in out


def test_overrides_may_follow_options():
    """argparse alone gives `run NAME --profile tiny k=v` no overrides (bpo-15112); the CLI takes them."""
    parser = cli.build_parser()
    args = cli._parse(parser, ["run", "chance", "base.train.steps=5", "--profile", "tiny", "a7_seeds=2"])
    assert (args.name, args.profile, args.overrides) == ("chance", "tiny", ["base.train.steps=5", "a7_seeds=2"])
    with pytest.raises(cli.UsageError, match="unrecognized arguments: --bogus"):
        cli._parse(parser, ["run", "chance", "--profile", "tiny", "--bogus"])
    with pytest.raises(cli.UsageError, match="unrecognized arguments: a=1"):
        cli._parse(parser, ["list", "a=1"])  # a command without overrides takes none
