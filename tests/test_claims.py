"""The claims file (experiments/claims.toml): complete, consistent with the experiments'
CLAIMS tuples, quoting the Russian originals; a damaged file is a one-line ClaimsError."""

import os
import re
import tomllib
from pathlib import Path

import pytest

from netalchemy import claims, experiment

ROOT = Path(__file__).resolve().parents[1]
FILE = ROOT / "experiments" / "claims.toml"
EXPECTED_IDS = [f"M{i}" for i in range(1, 15)] + [f"A{i}" for i in range(1, 8)]
CYRILLIC = re.compile(r"[\u0400-\u04FF]")


def test_every_claim_once_in_audit_order():
    loaded = claims.load()
    assert list(loaded) == EXPECTED_IDS
    assert all(key == claim.id for key, claim in loaded.items())
    # The file itself lists each id exactly once (load() would reject a repeat, but check the text).
    ids = [c["id"] for c in tomllib.loads(FILE.read_text(encoding="utf-8"))["claim"]]
    assert sorted(ids) == sorted(EXPECTED_IDS)


def test_packaged_file_is_the_repository_file():
    assert Path(str(claims.default_path())).resolve() == FILE.resolve()
    assert claims.load(FILE) == claims.load()


def test_package_data_declares_the_claims_file():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "claims.toml" in project["tool"]["setuptools"]["package-data"]["experiments"]


def test_claims_name_the_experiment_that_lists_them():
    loaded = claims.load()
    for claim in loaded.values():
        assert claim.experiment in experiment.EXPERIMENTS, claim.id
        assert claim.id in experiment.load_module(claim.experiment).CLAIMS, claim.id


def test_every_experiment_claim_is_in_the_file():
    loaded = claims.load()
    listed = []
    for name in experiment.EXPERIMENTS:
        for ident in experiment.load_module(name).CLAIMS:
            assert ident in loaded, f"{name} tests {ident}, which claims.toml lacks"
            assert loaded[ident].experiment == name, ident
            listed.append(ident)
    assert sorted(listed) == sorted(loaded)  # no claim tested twice, none left untested


def test_quotes_are_russian_and_glosses_english():
    loaded = claims.load()
    sources = claims.load_document().sources
    for claim in loaded.values():
        assert CYRILLIC.search(claim.quote), claim.id
        assert claim.gloss and not CYRILLIC.search(claim.gloss), claim.id
        assert claim.id.startswith(sources[claim.source].prefix)
        # Fragments joined by "[…]" each carry text of their own.
        assert all(CYRILLIC.search(part) for part in claim.quote.split("[…]")), claim.id
    assert {c.source for c in loaded.values() if c.id.startswith("M")} == {"article"}
    assert {c.source for c in loaded.values() if c.id.startswith("A")} == {"essay"}


def test_document_keeps_overview_sources_and_references():
    doc = claims.load_document()
    assert set(doc.sources) == {"article", "essay"}
    assert {s.file for s in doc.sources.values()} == {"002_b92d1ba871280deb.txt",
                                                       "000_dd515938896224b6.txt"}
    assert "alchemy" in doc.overview and "M1" in doc.overview
    refs = {r.id: r for r in doc.references}
    assert set(refs) == {"mnist1d", "santurkar2018", "kornblith2019", "zhang2017"}
    assert "68%" in refs["mnist1d"].finding and "32%" in refs["mnist1d"].finding
    for ref in doc.references:
        assert ref.experiment in experiment.EXPERIMENTS
        assert all(doc.claims[c].experiment == ref.experiment for c in ref.claims)


def test_the_claims_file_points_nowhere_outside_the_repository():
    assert "shared/" not in FILE.read_text(encoding="utf-8")


def test_find():
    assert claims.find("M1").experiment == "gradcheck"
    with pytest.raises(claims.ClaimsError, match="unknown claim 'M99'"):
        claims.find("M99")


def _damaged(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


GOOD = FILE.read_text(encoding="utf-8")
DAMAGE = {
    "not toml": (GOOD + "\n[[claim]\n", "Expected ']]'"),
    "truncated": (GOOD[: len(GOOD) // 2] + '\nquote = """unterminated', "line"),
    "missing field": (_damaged(GOOD, 'measurement = "Exact value', 'measurment = "Exact value'),
                      "claim M1: unknown key(s) 'measurment'"),
    "empty statement": (_damaged(GOOD, 'statement = "L1/L2 penalties prevent overfitting."',
                                 'statement = ""'), "claim M13: 'statement' is missing or empty"),
    "duplicate id": (_damaged(GOOD, 'id = "M14"', 'id = "M13"'), "claim M13 appears twice"),
    "wrong prefix": (_damaged(GOOD, 'id = "A6"', 'id = "M15"'), "starting 'A'"),
    "unknown source": (_damaged(GOOD, 'source = "essay"', 'source = "blog"'), "unknown source 'blog'"),
    "english quote": (_damaged(GOOD, 'quote = "Каждый последующий слой строит все более абстрактные '
                               'репрезентации"', 'quote = "Each layer"'), "original (Russian)"),
    "number for text": (_damaged(GOOD, 'experiment = "stages"', "experiment = 3"),
                        "'experiment' must be a string"),
    "claims not an array": (GOOD.replace("[[claim]]", "[[claims]]"), "unknown key(s) 'claims'"),
    "bad reference": (_damaged(GOOD, 'claims = ["A6"]', 'claims = ["A60"]'), "unknown claim id(s) A60"),
    "empty": ("", "no [sources"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_file_is_a_one_line_error(tmp_path, case):
    text, expected = DAMAGE[case]
    path = tmp_path / "claims.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(claims.ClaimsError) as info:
        claims.load(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)), message
    assert expected in message, message


def test_missing_and_undecodable_files(tmp_path):
    with pytest.raises(claims.ClaimsError, match="no such file"):
        claims.load(tmp_path / "absent.toml")
    path = tmp_path / "latin1.toml"
    path.write_bytes('title = "é"'.encode("latin-1"))
    with pytest.raises(claims.ClaimsError, match="latin1.toml: 'utf-8' codec"):
        claims.load(path)


def _normalised(text: str) -> str:
    """Text compared as the claims file quotes it: line-end hyphenation undone, footnote
    markers (digits glued to a word) dropped, whitespace ignored."""
    text = re.sub(r"-\n\s*", "", text)
    text = re.sub(r"(?<=[^\W\d_])\d+(?=[\s,.;:])", "", text)
    return re.sub(r"\s+", "", text)


def test_normalisation_of_the_originals():
    assert _normalised("эффек-\nтивность,   батч-нормализация8, увеличивает") == \
        _normalised("эффективность, батч-нормализация, увеличивает")
    assert _normalised("Куртов, 2019: 120") == "Куртов,2019:120"  # citations keep their digits


@pytest.mark.skipif(not os.environ.get("NETALCHEMY_SEEDS"),
                    reason="set NETALCHEMY_SEEDS to the folder holding the original texts")
def test_quotes_occur_verbatim_in_the_originals():
    folder = Path(os.environ["NETALCHEMY_SEEDS"])
    doc = claims.load_document()
    texts = {key: _normalised((folder / source.file).read_text(encoding="utf-8"))
             for key, source in doc.sources.items()}
    for claim in doc.claims.values():
        for part in claim.quote.split("[…]"):
            assert _normalised(part) in texts[claim.source], (claim.id, part)
