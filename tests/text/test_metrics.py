"""Corpus WER/CER equal jiwer's on the same pairs."""

import jiwer
import numpy as np
import pytest

from fl_dp_asr.text import ErrorCounts, corpus_cer, corpus_wer


def _random_corpus(seed, n=40):
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "it's"]
    refs, hyps = [], []
    for _ in range(n):
        ref = list(rng.choice(words, size=rng.integers(1, 12)))
        hyp = [w for w in ref if rng.random() > 0.15]
        hyp = [w if rng.random() > 0.2 else str(rng.choice(words)) for w in hyp]
        if rng.random() < 0.3:
            hyp.insert(int(rng.integers(0, len(hyp) + 1)), str(rng.choice(words)))
        refs.append(" ".join(ref))
        hyps.append(" ".join(hyp))
    return refs, hyps


def test_corpus_rates_equal_jiwer_and_are_length_weighted():
    refs, hyps = _random_corpus(0)
    hyps[3] = ""  # an empty hypothesis
    assert corpus_wer(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    assert corpus_cer(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)
    per_utterance_mean = np.mean([jiwer.wer(r, h) for r, h in zip(refs, hyps)])
    assert corpus_wer(refs, hyps) != pytest.approx(per_utterance_mean)


def test_counts_accumulate_across_batches():
    refs, hyps = _random_corpus(1)
    total = ErrorCounts()
    for i in range(0, len(refs), 7):
        part = ErrorCounts()
        part.add(refs[i : i + 7], hyps[i : i + 7])
        total = total + part
    assert total.utterances == len(refs)
    assert total.wer == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    assert total.cer == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        total.add(["a", "b"], ["a"])
    assert np.isnan(ErrorCounts().wer)
