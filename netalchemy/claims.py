"""The claims netalchemy audits, read from `experiments/claims.toml`.

The file is the single source of the claims: each claim's id, statement, the sentence of the
original (Russian) text it comes from with an English gloss, how it is measured, and the
experiment module that tests it; beside them the two source texts, an overview, and the
published results the audit reproduces. `load()` gives the claims in audit order (the
article's M1, M2, … then the essay's A1, A2, …); `load_document()` gives everything.

The file is package data (`importlib.resources`), so it reads the same from a checkout and
from an installed wheel. A damaged or invalid file raises `ClaimsError` with a one-line
message naming the file and the fault.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Union

PACKAGE, FILENAME = "experiments", "claims.toml"
_ID = re.compile(r"([A-Z]+)([1-9][0-9]*)")
_CYRILLIC = re.compile(r"[\u0400-\u04FF]")


class ClaimsError(ValueError):
    """The claims file is missing, unparsable or invalid; the message is one line."""


@dataclass(frozen=True)
class Source:
    """One of the original texts the claims come from."""

    key: str  # "article" or "essay": what `Claim.source` refers to
    prefix: str  # the id prefix of its claims: "M" for the article, "A" for the essay
    file: str  # the file name of the original
    title: str  # the original title (Russian), "" where the copy carries none
    description: str  # what the text is, in English


@dataclass(frozen=True)
class Claim:
    """One claim of the audit, as the source text makes it and as the audit measures it."""

    id: str  # e.g. "M2"
    statement: str  # the claim, in English
    source: str  # key of its `Source`: "article" or "essay"
    quote: str  # the original sentence(s), Russian, verbatim; "[…]" joins separate sentences
    gloss: str  # an English gloss of the quote
    experiment: str  # the module of `experiments/` that tests it
    measurement: str  # how the audit measures it


@dataclass(frozen=True)
class Reference:
    """A published result the audit reproduces or measures against."""

    id: str
    citation: str  # authors, title, venue, year
    url: str
    finding: str  # the published numbers or finding, in words
    claims: tuple[str, ...]  # claim ids it bears on (may be empty)
    experiment: str  # the module that reproduces it


@dataclass(frozen=True)
class ClaimsDocument:
    """Everything in the claims file."""

    overview: str
    sources: dict[str, Source]
    claims: dict[str, Claim]  # audit order: by source, then by number
    references: tuple[Reference, ...]


def default_path() -> Any:
    """The packaged claims file (a `Traversable`; a real path in a checkout)."""
    return resources.files(PACKAGE).joinpath(FILENAME)


def load(path: Union[str, Path, None] = None) -> dict[str, Claim]:
    """The claims by id, in audit order (M1..M14, then A1..A7).

    Args:
      path: a claims file; default the packaged `experiments/claims.toml`.
    Raises:
      ClaimsError: the file is missing, not TOML, or fails validation (one-line message).
    """
    return load_document(path).claims


def load_document(path: Union[str, Path, None] = None) -> ClaimsDocument:
    """The whole claims file, validated (see `load`)."""
    source = default_path() if path is None else Path(path)
    name = str(path) if path is not None else f"{PACKAGE}/{FILENAME}"
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ClaimsError(f"{name}: no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ClaimsError(f"{name}: {_one_line(err)}") from None
    try:
        return _parse(raw)
    except ClaimsError as err:
        raise ClaimsError(f"{name}: {err}") from None


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _text(table: dict, key: str, where: str, *, required: bool = True) -> str:
    value = table.get(key, "")
    if not isinstance(value, str):
        raise ClaimsError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ClaimsError(f"{where}: {key!r} is missing or empty")
    return value.strip()


def _check_keys(table: Any, allowed: set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise ClaimsError(f"{where} must be a table")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ClaimsError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; "
                          f"allowed: {', '.join(sorted(allowed))}")


def _parse_source(key: str, table: Any) -> Source:
    where = f"[sources.{key}]"
    _check_keys(table, {"prefix", "file", "title", "description"}, where)
    prefix = _text(table, "prefix", where)
    if not re.fullmatch(r"[A-Z]+", prefix):
        raise ClaimsError(f"{where}: prefix must be capital letters, got {prefix!r}")
    return Source(key=key, prefix=prefix, file=_text(table, "file", where),
                  title=_text(table, "title", where, required=False),
                  description=_text(table, "description", where))


def _parse_claim(index: int, table: Any, sources: dict[str, Source]) -> Claim:
    named = isinstance(table, dict) and isinstance(table.get("id"), str) and table["id"].strip()
    where = f"claim {table['id'].strip()}" if named else f"claim #{index + 1}"
    _check_keys(table, {f.name for f in Claim.__dataclass_fields__.values()}, where)
    ident = _text(table, "id", where)
    match = _ID.fullmatch(ident)
    if match is None:
        raise ClaimsError(f"{where}: id must be a prefix and a number, e.g. 'M1'")
    source = _text(table, "source", where)
    if source not in sources:
        raise ClaimsError(f"{where}: unknown source {source!r}; choose from {', '.join(sources)}")
    if match.group(1) != sources[source].prefix:
        raise ClaimsError(f"{where}: a claim from the {source} has an id starting "
                          f"{sources[source].prefix!r}")
    quote = _text(table, "quote", where)
    if not _CYRILLIC.search(quote):
        raise ClaimsError(f"{where}: the quote must be the original (Russian) text")
    return Claim(id=ident, statement=_text(table, "statement", where), source=source, quote=quote,
                 gloss=_text(table, "gloss", where), experiment=_text(table, "experiment", where),
                 measurement=_text(table, "measurement", where))


def _parse_reference(index: int, table: Any) -> Reference:
    where = f"reference #{index + 1}"
    _check_keys(table, {"id", "citation", "url", "finding", "claims", "experiment"}, where)
    claims = table.get("claims", [])
    if not isinstance(claims, list) or not all(isinstance(c, str) for c in claims):
        raise ClaimsError(f"{where}: 'claims' must be a list of claim ids")
    return Reference(id=_text(table, "id", where), citation=_text(table, "citation", where),
                     url=_text(table, "url", where, required=False),
                     finding=_text(table, "finding", where), claims=tuple(claims),
                     experiment=_text(table, "experiment", where, required=False))


def _list_of_tables(raw: dict, key: str) -> list:
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise ClaimsError(f"{key!r} must be an array of tables ([[{key}]])")
    return value


def _parse(raw: dict) -> ClaimsDocument:
    _check_keys(raw, {"overview", "sources", "claim", "reference"}, "the file")
    sources_raw = raw.get("sources", {})
    if not isinstance(sources_raw, dict) or not sources_raw:
        raise ClaimsError("no [sources.<name>] tables")
    sources = {key: _parse_source(key, table) for key, table in sources_raw.items()}
    prefixes = [s.prefix for s in sources.values()]
    if len(set(prefixes)) < len(prefixes):
        raise ClaimsError(f"two sources share an id prefix: {', '.join(prefixes)}")
    claims = [_parse_claim(i, t, sources) for i, t in enumerate(_list_of_tables(raw, "claim"))]
    if not claims:
        raise ClaimsError("no [[claim]] entries")
    seen: dict[str, Claim] = {}
    for claim in claims:
        if claim.id in seen:
            raise ClaimsError(f"claim {claim.id} appears twice")
        seen[claim.id] = claim
    order = {key: i for i, key in enumerate(sources)}
    ordered = sorted(claims, key=lambda c: (order[c.source], int(_ID.fullmatch(c.id).group(2))))
    references = tuple(_parse_reference(i, t) for i, t in enumerate(_list_of_tables(raw, "reference")))
    for ref in references:
        unknown = [c for c in ref.claims if c not in seen]
        if unknown:
            raise ClaimsError(f"reference {ref.id}: unknown claim id(s) {', '.join(unknown)}")
    overview = raw.get("overview", {})
    _check_keys(overview, {"text"}, "[overview]")
    return ClaimsDocument(overview=_text(overview, "text", "[overview]"), sources=sources,
                          claims={c.id: c for c in ordered}, references=references)


def find(claim_id: str, claims: Optional[dict[str, Claim]] = None) -> Claim:
    """One claim by id; a one-line `ClaimsError` for an unknown id."""
    claims = load() if claims is None else claims
    if claim_id not in claims:
        raise ClaimsError(f"unknown claim {claim_id!r}; choose from {', '.join(claims)}")
    return claims[claim_id]
