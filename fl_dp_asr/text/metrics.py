"""Corpus WER and CER, weighted by reference length, computed with ``jiwer``.

WER = (substitutions + deletions + insertions) / reference words, summed over the whole
corpus (not a mean of per-utterance rates); CER the same over characters (spaces
included, as in ``jiwer.cer``). :class:`ErrorCounts` accumulates the counts batch by
batch (they add up across batches, hosts or clients) and equals ``jiwer.wer`` /
``jiwer.cer`` on the concatenated pairs. Edit distances come from ``jiwer`` itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jiwer


@dataclasses.dataclass
class ErrorCounts:
    """Edit-distance totals of a corpus; ``+`` merges two of them.

    >>> c = ErrorCounts()
    >>> c.add(["a b c", "d e"], ["a x c", "d e f"])
    >>> round(c.wer, 3), c.word_errors, c.reference_words
    (0.4, 2, 5)
    """

    word_errors: int = 0
    reference_words: int = 0
    char_errors: int = 0
    reference_chars: int = 0
    utterances: int = 0

    def add(self, references: Sequence[str], hypotheses: Sequence[str]) -> None:
        """Adds the edit distances of the pairs ``(references[i], hypotheses[i])``."""
        references, hypotheses = list(references), list(hypotheses)
        if len(references) != len(hypotheses):
            raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
        if not references:
            return
        words = jiwer.process_words(references, hypotheses)
        chars = jiwer.process_characters(references, hypotheses)
        self.word_errors += words.substitutions + words.deletions + words.insertions
        self.reference_words += words.substitutions + words.deletions + words.hits
        self.char_errors += chars.substitutions + chars.deletions + chars.insertions
        self.reference_chars += chars.substitutions + chars.deletions + chars.hits
        self.utterances += len(references)

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            *(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other)))
        )

    @property
    def wer(self) -> float:
        """Word error rate (errors / reference words); nan for an empty corpus."""
        return self.word_errors / self.reference_words if self.reference_words else float("nan")

    @property
    def cer(self) -> float:
        """Character error rate (errors / reference characters); nan for an empty corpus."""
        return self.char_errors / self.reference_chars if self.reference_chars else float("nan")


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """WER of the corpus: total word errors / total reference words (= ``jiwer.wer``)."""
    counts = ErrorCounts()
    counts.add(references, hypotheses)
    return counts.wer


def corpus_cer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """CER of the corpus: total char errors / total reference chars (= ``jiwer.cer``)."""
    counts = ErrorCounts()
    counts.add(references, hypotheses)
    return counts.cer
