"""Markdown built from data: escaped cells, tables whose rows cannot split, GitHub's anchors."""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence


class Markdown(str):
    """Markdown markup that `md_table` puts in a cell as it is (plain `str` cells are escaped)."""


# What could read as markup: backslash, code, emphasis (`_` only at a word's edge: y_true stays),
# the "](" or "][" that closes a link's text, raw HTML, entities, and the cell separator.
_SPECIAL = re.compile(r"[\\`*<>|&]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])|\](?=[(\[])")


def md_escape(text: Any) -> str:
    """Plain text as inline markdown on one line; what could read as markup is backslash-escaped."""
    return _SPECIAL.sub(lambda m: "\\" + m.group(0), " ".join(str(text).split()))


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A GFM table, one line per row; `Markdown` cells go in as they are, anything else escaped."""
    def cell(x: Any) -> str:
        return " ".join(x.split()) if isinstance(x, Markdown) else md_escape(x)

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"table row has {len(row)} cells, header has {len(header)}")
        lines.append("| " + " | ".join(cell(x) or " " for x in row) + " |")
    return lines


def slug(text: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
