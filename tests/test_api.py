"""The package's Python API: public names, lazy imports, __version__, the docstring's example."""

import os
import re
import subprocess
import sys
from importlib import metadata

import netalchemy


def python(code, *, cwd=None, env=None):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})})


def test_public_names():
    from netalchemy import config, stats, sweep

    assert netalchemy.Config is config.Config and netalchemy.override is config.override
    assert netalchemy.config_hash is config.config_hash and netalchemy.ConfigError is config.ConfigError
    assert netalchemy.sweep is sweep and netalchemy.stats is stats and netalchemy.SweepResult is sweep.SweepResult
    assert callable(netalchemy.sweep.run) and callable(netalchemy.devices.use_cpu_cores)
    assert set(netalchemy.__all__) <= set(dir(netalchemy))
    assert netalchemy.__version__ == metadata.version("netalchemy")
    assert netalchemy.__doc__.splitlines()[0].startswith("netalchemy: ")


def test_unknown_attribute_is_an_attribute_error():
    try:
        netalchemy.no_such_name
    except AttributeError as e:
        assert "no_such_name" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_import_leaves_jax_and_scipy_alone():
    result = python("import sys, netalchemy; netalchemy.Config(); "
                    "print(sorted(m for m in ('jax', 'scipy', 'tensorflow_datasets') if m in sys.modules))")
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def example() -> str:
    """The six-line example of the package docstring."""
    lines = [line[4:] for line in netalchemy.__doc__.splitlines() if line.startswith("    ")]
    assert len(lines) == 6, lines
    return "\n".join(lines)


def test_docstring_example_trains_a_sweep_and_prints_its_cis(tmp_path):
    code = example()
    settings = '["seeds.n=16", "train.steps=2000"]'
    assert settings in code
    tiny = '["seeds.n=3", "train.steps=20", "train.eval_every=10", "model.hidden=8"]'
    code = code.replace(settings, tiny) + "\nimport jax; print('devices', len(jax.devices()))"
    result = python(code, cwd=tmp_path, env={"NETALCHEMY_CPU_DEVICES": "2"})
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0] == "3 runs, 0 diverged" and any(line.split()[1:2] == ["test_acc"] for line in out)
    assert re.fullmatch(r"0\.\d+ \[0\.\d+, 0\.\d+\]", out[-2]), out[-2]  # estimate [low, high]
    assert out[-1] == "devices 2"  # use_cpu_cores ran before JAX started
    assert len(list((tmp_path / "runs" / "train").iterdir())) == 1


def test_cli_version_and_help_start_without_jax_or_tfds():
    result = python("import sys\nfrom netalchemy import cli\nfor argv in (['--version'], ['train', '--help']):\n"
                    "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
                    "print(sorted(m for m in ('jax', 'tensorflow_datasets') if m in sys.modules))")
    assert result.returncode == 0 and result.stdout.strip().endswith("[]"), result.stderr


def test_the_command_draws_with_agg_unless_told_otherwise():
    code = ("import os, sys\nfrom netalchemy import cli\nsys.argv = ['netalchemy', '--version']\n"
            "try:\n    cli.main(['--version'])\nexcept SystemExit:\n    pass\nprint(os.environ.get('MPLBACKEND'))\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\nprint(os.environ.get('MPLBACKEND'))")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.stdout.splitlines()[1::2] == ["None", "Agg"], result.stderr  # cli.main(argv) from Python: unchanged
    chosen = python(code, env={"MPLBACKEND": "svg"})
    assert chosen.stdout.splitlines()[1::2] == ["svg", "svg"], chosen.stderr


def test_the_readme_hooks_example_runs_and_measures_what_it_says():
    """The README's measurement/perturbation example, run as written on a tiny config."""
    import re
    from pathlib import Path

    import numpy as np

    import netalchemy as na
    from sweep_helpers import tiny

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "measure=weight_norm" in b)
    cfg = tiny("seeds.n=4")
    scope = {"na": na, "cfg": cfg}
    exec(block, scope)
    result = scope["result"]
    norms = result.measures["norm"]
    assert norms.shape == (4, 5)
    np.testing.assert_allclose(norms, result.history["param_norm"], rtol=1e-6)  # the engine measures the same norm
    plain = na.sweep.run(cfg, progress=False)
    w0, w0_plain = result.final.params[0].w, plain.final.params[0].w
    assert np.array_equal(w0[:2], w0_plain[:2]) and not np.array_equal(w0[2:], w0_plain[2:])
