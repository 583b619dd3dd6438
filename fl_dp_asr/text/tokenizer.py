"""Character vocabulary and text normalization for English, French and German.

The vocabulary is the paper's: CTC blank, ``a``–``z``, space, apostrophe and hyphen
(30 tokens). French and German text is transliterated to ASCII before tokenization.

Normalization, in order:

1. Unicode NFC, then ``str.casefold`` (``ß`` and ``ẞ`` become ``ss``).
2. Typographic apostrophes (``’ ‘ ʼ ´ ` ``) become ``'``; Unicode hyphens (``‐ ‑``) become
   ``-``; the punctuation in :data:`PUNCTUATION` (``. , ; : ! ? " ( ) « » – — …`` and
   friends) becomes a space. These are expected in transcripts and are not reported.
3. Letters outside ``a``–``z`` are transliterated: ligatures ``æ→ae``, ``œ→oe``,
   ``ø→o``, ``ł→l``, ``đ/ð→d``, ``þ→th``; with ``language="de"`` the umlauts follow the German
   convention ``ä→ae``, ``ö→oe``, ``ü→ue`` (``Müller → mueller``); otherwise (English,
   French) accents are stripped (``é→e``, ``ç→c``, ``ä→a``, ``naïve → naive``).
4. Whatever is still outside the vocabulary (digits, ``&``, ``%``, non-Latin scripts,
   emoji, ...) is an *unknown symbol*, handled by ``on_unknown``:
   ``"drop"`` removes it (still listed in :attr:`Normalized.dropped`), ``"error"`` raises
   ``ValueError`` naming the symbols and the text, ``"report"`` removes it, counts it in
   :attr:`CharTokenizer.dropped` and logs a warning the first time each symbol is seen.
5. Hyphens not between two letters and apostrophes touching no letter are removed
   ("a - b" → "a b"; "students' 'tis" is kept), whitespace is collapsed and stripped.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
import unicodedata
from collections.abc import Iterable
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

BLANK_ID = 0
BLANK = "<blank>"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCABULARY: tuple[str, ...] = (BLANK, *LETTERS, " ", "'", "-")
VOCAB_SIZE = len(VOCABULARY)  # 30
_CHAR_TO_ID = {c: i for i, c in enumerate(VOCABULARY) if i != BLANK_ID}

UnknownPolicy = Literal["drop", "error", "report"]
Language = Literal["en", "fr", "de"]

APOSTROPHES = "’‘ʼ´`′"
HYPHENS = "‐‑"
PUNCTUATION = '.,;:!?¿¡"“”„‟«»‹›()[]{}<>/\\|_–—―…·•*~\u00a0\t\n\r'

_LIGATURES = {"æ": "ae", "œ": "oe", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i"}
_GERMAN_UMLAUTS = {"ä": "ae", "ö": "oe", "ü": "ue"}
_STRAY_MARKS = re.compile(r"(?<![a-z])-+|-+(?![a-z])|(?<![a-z])'+(?![a-z])")
_SPACES = re.compile(r" +")

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Normalized:
    """Result of :func:`normalize`: the text and the unknown symbols removed from it."""

    text: str
    dropped: str


def _strip_accents(char: str) -> str:
    decomposed = unicodedata.normalize("NFKD", char)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def normalize(
    text: str, language: Language = "en", on_unknown: UnknownPolicy = "drop"
) -> Normalized:
    """Normalizes ``text`` to the vocabulary (see the module docstring for the rules).

    Args:
        text: raw transcript.
        language: ``"en"``, ``"fr"`` or ``"de"``; only changes the umlaut rule (``de``: ä→ae).
        on_unknown: ``"drop"``, ``"error"`` or ``"report"`` for symbols outside the vocabulary
            after transliteration. ``"report"`` behaves as ``"drop"`` here; the counting and
            logging happen in :class:`CharTokenizer`.

    Returns:
        ``Normalized(text, dropped)``: ``dropped`` lists the unknown symbols removed, in order.

    Raises:
        ValueError: ``on_unknown="error"`` and ``text`` has unknown symbols, or a bad option.

    >>> normalize("Straße, Œuvre & Müller!", language="de").text
    'strasse oeuvre mueller'
    >>> normalize("Café n°5", language="fr").dropped
    '°5'
    """
    if language not in ("en", "fr", "de"):
        raise ValueError(f"language must be 'en', 'fr' or 'de', got {language!r}")
    if on_unknown not in ("drop", "error", "report"):
        raise ValueError(f"on_unknown must be 'drop', 'error' or 'report', got {on_unknown!r}")
    out: list[str] = []
    dropped: list[str] = []
    for char in unicodedata.normalize("NFC", text).casefold():
        if char in _CHAR_TO_ID:
            out.append(char)
        elif char in APOSTROPHES:
            out.append("'")
        elif char in HYPHENS:
            out.append("-")
        elif char in PUNCTUATION or char.isspace():
            out.append(" ")
        elif char in _LIGATURES:
            out.append(_LIGATURES[char])
        elif language == "de" and char in _GERMAN_UMLAUTS:
            out.append(_GERMAN_UMLAUTS[char])
        else:
            ascii_form = _strip_accents(char)
            if ascii_form and all(c in LETTERS for c in ascii_form):
                out.append(ascii_form)
            else:
                dropped.append(char)
    if dropped and on_unknown == "error":
        raise ValueError(
            f"unknown symbols {''.join(dropped)!r} in transcript {text!r}; "
            "use on_unknown='drop' or 'report' to remove them"
        )
    cleaned = _STRAY_MARKS.sub(" ", "".join(out))
    return Normalized(_SPACES.sub(" ", cleaned).strip(), "".join(dropped))


class CharTokenizer:
    """Character tokenizer: ids 0 = blank, 1–26 = a–z, 27 = space, 28 = ``'``, 29 = ``-``.

    Args:
        language: ``"en"``, ``"fr"`` or ``"de"`` (see :func:`normalize`).
        on_unknown: ``"drop"``, ``"error"`` or ``"report"``. Every mode counts removed symbols
            in :attr:`dropped`; ``"report"`` also logs a warning the first time a symbol is seen.

    >>> tok = CharTokenizer()
    >>> ids = tok.encode("Don't stop!")
    >>> tok.decode(ids)
    "don't stop"
    """

    blank_id = BLANK_ID
    vocab_size = VOCAB_SIZE
    vocabulary = VOCABULARY

    def __init__(self, language: Language = "en", on_unknown: UnknownPolicy = "drop"):
        normalize("", language, on_unknown)  # validates the options
        self.language = language
        self.on_unknown = on_unknown
        self.dropped: collections.Counter[str] = collections.Counter()

    def normalize(self, text: str) -> str:
        """Normalized text; unknown symbols follow ``on_unknown`` and are counted."""
        result = normalize(text, self.language, self.on_unknown)
        if result.dropped:
            if self.on_unknown == "report":
                new = sorted(set(result.dropped) - set(self.dropped))
                if new:
                    logger.warning(
                        "dropping unknown symbols %r (first seen in %r)", "".join(new), text
                    )
            self.dropped.update(result.dropped)
        return result.text

    def encode(self, text: str) -> np.ndarray:
        """Token ids (int32 [len]) of the normalized ``text``; never contains the blank."""
        return np.fromiter((_CHAR_TO_ID[c] for c in self.normalize(text)), dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; blanks (0) are skipped, other out-of-range ids raise ValueError."""
        chars = []
        for i in np.asarray(ids, dtype=np.int64).reshape(-1):
            if i == BLANK_ID:
                continue
            if not 0 < i < VOCAB_SIZE:
                raise ValueError(f"token id {i} outside the vocabulary [0, {VOCAB_SIZE})")
            chars.append(VOCABULARY[i])
        return "".join(chars)

    def decode_batch(self, ids: ArrayLike, lengths: ArrayLike) -> list[str]:
        """Decodes ``ids[b, :lengths[b]]`` for each row ``b`` of int [B, N] ``ids``."""
        ids, lengths = np.asarray(ids), np.asarray(lengths)
        return [self.decode(row[:n]) for row, n in zip(ids, lengths)]
