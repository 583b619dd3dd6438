"""Generated blocks of markdown between ``<!-- name:begin -->`` / ``<!-- name:end -->``
markers: what the experiment scripts write into README.md and docs/ (stdlib only)."""

from __future__ import annotations

import re


def find_block(text: str, begin: str, end: str) -> str | None:
    """The first block of ``text`` from ``begin`` to ``end``, markers included, or None."""
    found = re.search(re.escape(begin) + ".*?" + re.escape(end), text, flags=re.S)
    return found.group(0) if found else None


def replace_block(text: str, begin: str, end: str, block: str) -> str:
    """``text`` with every ``begin``–``end`` block replaced by ``block`` (markers included)."""
    return re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)


def embed(text: str, begin: str, end: str, body: str) -> str:
    """``text`` with what stands between the markers replaced by ``body`` (which ends with a
    newline: the end marker starts a line)."""
    return replace_block(text, begin, end, f"{begin}\n{body}{end}")
