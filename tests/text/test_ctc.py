"""Greedy CTC decoding (JAX) and prefix beam search (numpy)."""

import itertools

import jax.numpy as jnp
import numpy as np

from fl_dp_asr.text import beam_search_batch, greedy_decode, prefix_beam_search


def _collapse(path, blank=0):
    out, previous = [], None
    for token in path:
        if token != blank and token != previous:
            out.append(int(token))
        previous = token
    return tuple(out)


def test_greedy_matches_python_reference_with_padding():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 17, 6)).astype(np.float32)
    logits[..., 0] += 0.5  # some blanks
    frames = np.array([17, 10, 1, 0, 13])
    paddings = (np.arange(17)[None, :] >= frames[:, None]).astype(np.float32)
    ids, lengths = greedy_decode(jnp.asarray(logits), jnp.asarray(paddings))
    for b in range(5):
        expected = _collapse(logits[b, : frames[b]].argmax(-1))
        assert tuple(np.asarray(ids[b, : lengths[b]])) == expected
        assert not np.asarray(ids[b, lengths[b] :]).any()


def _best_labelling_brute_force(log_probs):
    scores = {}
    for path in itertools.product(range(log_probs.shape[1]), repeat=log_probs.shape[0]):
        score = sum(log_probs[t, v] for t, v in enumerate(path))
        label = _collapse(path)
        scores[label] = np.logaddexp(scores.get(label, -np.inf), score)
    return max(scores.items(), key=lambda kv: kv[1])


def test_wide_beam_finds_the_most_probable_labelling():
    rng = np.random.default_rng(1)
    for _ in range(5):
        logits = rng.normal(size=(5, 3)) * 2
        log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        label, score = _best_labelling_brute_force(log_probs)
        best, best_score = prefix_beam_search(logits, beam_width=64)[0]
        assert best == label and np.isclose(best_score, score)


def test_beam_beats_greedy_when_alignments_merge():
    # Best path: three blanks, "" with P = 0.55³ = 0.166. Beam search sums the alignments
    # of "1" (1 − P("") − P(1 _ 1) = 0.722) and returns it.
    log_probs = np.log(np.array([[0.55, 0.45]] * 3))
    _, lengths = greedy_decode(jnp.asarray(log_probs[None]), jnp.zeros((1, 3)))
    assert int(lengths[0]) == 0
    (best, score), (second, _) = prefix_beam_search(log_probs, beam_width=4)[:2]
    assert best == (1,) and second == ()
    assert np.isclose(np.exp(score), 1 - 0.55**3 - 0.45 * 0.55 * 0.45)
    assert beam_search_batch(log_probs[None], np.zeros((1, 3)), beam_width=4) == [(1,)]
