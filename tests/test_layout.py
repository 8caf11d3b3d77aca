"""The repository's shape: library modules stay small, and nothing points outside the repository."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE = "../" + "shared"  # a path users who clone the repository do not have (spelled so this file is not a hit)
LIBRARY = sorted((ROOT / "netalchemy").rglob("*.py"))


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_library_modules_hold_at_most_400_lines(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 400


def test_nothing_points_outside_the_repository():
    texts = [ROOT / "README.md"]
    for folder in ("netalchemy", "experiments", "benchmarks", "notebooks", "tests"):
        texts += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".md", ".ipynb", ".toml"}]
    offenders = [str(p.relative_to(ROOT)) for p in texts
                 if p != Path(__file__) and OUTSIDE in p.read_text(encoding="utf-8")]
    assert offenders == []


EXPERIMENTS = sorted(p for p in (ROOT / "experiments").glob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiments_are_short_declarations_on_the_engine(path):
    """≤ 250 lines, no function over 60, and no training loop of their own (issue 10)."""
    import ast
    import re

    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    longest = max((n.end_lineno - n.lineno + 1 for n in ast.walk(ast.parse(text))
                   if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))), default=0)
    assert longest <= 60
    assert not re.search(r"lax\.scan|jax\.vmap|optax\.", text)
