"""Memorization scores: exposure and the membership attack on hand-made losses, summaries,
and per-utterance scoring of a random-init model against the project's CTC loss."""

import json
import math

import jax
import numpy as np
import pytest

from fl_dp_asr.memorization import measure
from fl_dp_asr.models import ctc_loss_fn, get_model_config, init_params
from fl_dp_asr.text import CharTokenizer

# Small enough to compile in a few seconds on 2 CPU cores (as tests/models/test_model.py).
CONFIG = get_model_config("tiny", num_blocks=2, model_dim=64, mlp_dim=128, conv_channels=128)
TEXTS = ["Zorp quix", "vel mab tuk", "bleem", "abcdefghijkl"]
SECONDS = [1.2, 0.6, 1.2, 0.2]  # the last: 12 letters in ~6 encoder frames (infeasible)
BEAM = 4


def _audio():
    rng = np.random.default_rng(0)
    return [(rng.normal(size=int(s * 16_000)) * 3000).astype(np.int16) for s in SECONDS]


@pytest.fixture(scope="module")
def params():
    return init_params(CONFIG, jax.random.key(0))


@pytest.fixture(scope="module")
def scored(params):
    candidates = [[TEXTS[(i + 1) % 4], TEXTS[(i + 2) % 4], TEXTS[(i + 3) % 4]] for i in range(4)]
    rows = measure.score_utterances(
        params, CONFIG, CharTokenizer(), _audio(), TEXTS, candidates, BEAM, batch_size=4
    )
    return rows, candidates


# --- exposure and the attack on hand-made losses ----------------------------------------


def test_exposure_is_log2_m_minus_log2_rank():
    others = np.array([2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])  # M = 8
    assert measure.exposure(1.0, others) == 3.0  # lowest: rank 1
    assert measure.exposure(4.5, others) == 1.0  # 3 lower: rank 4, 3 - 2
    assert measure.exposure(9.0, others) == 0.0  # highest: rank 8
    assert measure.exposure(4.0, others) == pytest.approx(3 - math.log2(3.5))  # tie: half
    assert measure.exposure(1.0, np.ones(7)) == pytest.approx(math.log2(8 / 4.5))
    with pytest.raises(ValueError, match="at least one candidate"):
        measure.exposure(1.0, [])


def test_membership_auc_separated_identical_and_hand_counted():
    assert measure.membership_auc([1.0, 2.0, 3.0], [4.0, 5.0]) == 1.0
    assert measure.membership_auc([1.0, 2.0], [1.0, 2.0]) == 0.5
    # Inserted (1, 3), held-out (2, 4). Empirical ROC (threshold falling through the
    # losses): (0, 0) (0, ½) (½, ½) (½, 1) (1, 1); its upper hull drops (½, ½) (a random
    # choice between two thresholds does better), area ¼·… = ½·(½+1)/2 + ½ = 0.875
    # (Mann-Whitney, without the hull: 3 of 4 pairs = 0.75).
    assert measure.membership_auc([1.0, 3.0], [2.0, 4.0]) == pytest.approx(0.875)
    # Lower loss = member: inserted losses above the held-out ones are no evidence (0.5).
    assert measure.membership_auc([5.0, 6.0], [1.0, 2.0]) == 0.5
    with pytest.raises(ValueError, match="0 held-out"):
        measure.membership_auc([1.0], [])


def test_roc_curve_runs_from_origin_to_one_and_its_area_is_the_auc():
    rng = np.random.default_rng(1)
    inserted, heldout = rng.normal(0.0, 1.0, 30), rng.normal(1.0, 1.0, 20)
    fpr, tpr = measure.roc_curve(inserted, heldout)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    auc = measure.membership_auc(inserted, heldout)
    assert 0.6 < auc < 1.0
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc)


# --- summaries ----------------------------------------------------------------------------


def _rows():
    def row(repeats, cer, loss, exact, exposure):
        return {"repeats": repeats, "cer": cer, "wer": 2 * cer, "loss": loss}, exact, exposure

    made = [
        row(0, 0.8, 5.0, 0.0, 0.5),
        row(0, 0.6, 6.0, 0.0, 1.5),
        row(1, 0.4, 5.5, 0.0, 1.0),
        row(4, 0.0, 1.0, 1.0, 3.0),
        row(4, 0.2, 2.0, 0.0, 2.0),
    ]
    return [r | {"exact": e, "exposure": x} for r, e, x in made]


def test_summarize_hand_computed_means_gaps_fractions_and_auc():
    summary = measure.summarize(_rows())
    assert summary["heldout_count"] == 2.0
    assert summary["r4/count"] == 2.0 and summary["r1/count"] == 1.0
    assert summary["r4/cer_inserted"] == pytest.approx(0.1)
    assert summary["r4/cer_heldout"] == pytest.approx(0.7)
    assert summary["r4/cer_gap"] == pytest.approx(60.0)  # percentage points
    assert summary["r4/wer_inserted"] == pytest.approx(0.2)
    assert summary["r4/exact_inserted"] == 0.5 and summary["r4/exact_heldout"] == 0.0
    assert summary["r4/exposure_inserted"] == 2.5 and summary["r4/exposure_heldout"] == 1.0
    assert summary["r4/auc"] == 1.0
    assert summary["r1/cer_gap"] == pytest.approx(30.0)
    # Loss 5.5 against held-out 5 and 6: ROC (0,0) (½,0) (½,1) (1,1), hull area 0.75.
    assert summary["r1/auc"] == pytest.approx(0.75)
    assert summary["all/count"] == 3.0
    assert summary["all/cer_inserted"] == pytest.approx(0.2)
    assert summary["all/cer_gap"] == pytest.approx(50.0)
    assert summary["all/exact_inserted"] == pytest.approx(1 / 3)
    assert not any("beam" in key for key in summary)  # the rows have no beam fields
    assert json.loads(json.dumps(summary)) == summary
    assert all(isinstance(v, float) for v in summary.values())


def test_format_line_highest_r_first():
    line = measure.format_line(measure.summarize(_rows()))
    assert line.startswith("memorization: r=4 CER 10.0% vs 70.0% held-out, exact 50%")
    assert "exposure 2.5 vs 1.0, AUC 1.00; r=1 CER 40.0% vs 70.0% held-out" in line


def test_summarize_needs_both_groups():
    with pytest.raises(ValueError, match="0 held-out and 3 inserted"):
        measure.summarize([r for r in _rows() if r["repeats"] > 0])
    with pytest.raises(ValueError, match=r"per_canary\[0\] lacks \['loss'\]"):
        measure.summarize([{"repeats": 0, "cer": 0.1}])


def test_plot_writes_a_png(tmp_path):
    rows = _rows()
    path = tmp_path / "memorization.png"
    summaries = {"no DP": measure.summarize(rows), "DP": measure.summarize(rows[:3])}
    measure.plot(summaries, {"no DP": rows, "DP": rows[:3]}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["memorization.png"]


# --- scoring utterances ---------------------------------------------------------------------


def test_rows_have_every_field(scored):
    rows, _ = scored
    assert len(rows) == len(TEXTS)
    for row, text in zip(rows, TEXTS):
        assert row["text"] == text.lower()
        assert isinstance(row["greedy"], str) and isinstance(row["beam"], str)
        assert math.isfinite(row["loss"]) and row["loss"] > 0 and row["loss"] == row["nll"]
        assert 0.0 <= row["exposure"] <= 2.0  # M = 4
        assert row["exact"] == float(row["greedy"] == row["text"])
        assert row["cer"] >= 0 and row["wer"] >= 0 and row["beam_cer"] >= 0
    assert [row["infeasible"] for row in rows] == [0.0, 0.0, 0.0, 1.0]
    json.dumps(rows)


def test_loss_equals_the_projects_ctc_loss(params, scored):
    rows, _ = scored
    tokenizer = CharTokenizer()
    audio = _audio()
    batch = {
        "audio": np.zeros((len(audio), max(map(len, audio))), np.int16),
        "audio_lengths": np.asarray([len(a) for a in audio], np.int32),
        "labels": np.zeros((len(audio), 16), np.int32),
        "label_lengths": np.zeros(len(audio), np.int32),
        "mask": np.ones(len(audio), np.float32),
    }
    for i, (clip, text) in enumerate(zip(audio, TEXTS)):
        ids = tokenizer.encode(text)
        batch["audio"][i, : len(clip)] = clip
        batch["labels"][i, : len(ids)] = ids
        batch["label_lengths"][i] = len(ids)
    out = jax.device_get(ctc_loss_fn(params, batch, None, False, config=CONFIG))
    np.testing.assert_allclose([row["loss"] for row in rows], out["loss"], rtol=1e-5)
    np.testing.assert_array_equal([row["infeasible"] for row in rows], out["infeasible"])


def test_exposure_ranks_the_candidates_losses_from_the_same_audio(params, scored):
    rows, candidates = scored
    # NLL of every text on every utterance's audio: text j on utterance i.
    audio = _audio()
    nll = np.array(
        [
            [
                row["nll"]
                for row in measure.score_utterances(
                    params,
                    CONFIG,
                    CharTokenizer(),
                    audio,
                    [TEXTS[(i + s) % 4] for i in range(4)],
                    beam_width=1,
                    batch_size=4,
                )
            ]
            for s in range(4)
        ]
    )  # nll[s, i] = NLL of text (i + s) % 4 on utterance i
    for i, row in enumerate(rows):
        assert row["nll"] == pytest.approx(nll[0, i], rel=1e-5)
        assert row["exposure"] == pytest.approx(measure.exposure(nll[0, i], nll[1:, i]))
    assert len(candidates[0]) == 3


def test_an_utterance_scores_the_same_alone_and_in_a_batch(params, scored):
    rows, candidates = scored
    audio = _audio()
    for i in (0, 1):  # padded to 1.2 s in the batch; utterance 1 alone to 0.6 s
        (alone,) = measure.score_utterances(
            params, CONFIG, CharTokenizer(), [audio[i]], [TEXTS[i]], [candidates[i]], BEAM, 4
        )
        assert alone["greedy"] == rows[i]["greedy"] and alone["beam"] == rows[i]["beam"]
        for key in ("loss", "exposure", "cer", "beam_cer"):
            assert alone[key] == pytest.approx(rows[i][key], rel=1e-5), key


def test_bad_inputs_name_what_to_fix(params):
    audio = _audio()[:1]
    with pytest.raises(ValueError, match="1 audio arrays but 2 texts"):
        measure.score_utterances(params, CONFIG, CharTokenizer(), audio, ["a", "b"])
    with pytest.raises(ValueError, match=r"texts\[0\] = '123' is empty after normalization"):
        measure.score_utterances(params, CONFIG, CharTokenizer(), audio, ["123"])
    with pytest.raises(ValueError, match=r"candidates\[0\] is empty"):
        measure.score_utterances(params, CONFIG, CharTokenizer(), audio, ["a"], [[]])
