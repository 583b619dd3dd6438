"""The memorization audit in the trainers and `python -m experiments.memorization --quick`
on the tiny corpus: canary utterances reach the users' data, are measured, memorized without
DP and much less under strong noise."""

import dataclasses
import json
import os

import pytest

from experiments import canary_utterances, memorization, train_fl
from experiments.configs import fl_dp
from fl_dp_asr.text.tokenizer import CharTokenizer
from fl_dp_asr.train import utils
from fl_dp_asr.train.metrics import read_jsonl
from tests.experiments.test_demo import tiny_central_config
from tests.experiments.test_train_fl import small_config


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def with_canaries(config, **fields):
    u = config.audit.utterances
    u.per_repeat, u.repeats, u.users, u.candidates = 1, (1, 4), 2, 16
    for key, value in fields.items():
        u[key] = value
    return config


def test_off_inserts_nothing(tiny_corpus, tfds_dir):
    config = small_config(tiny_corpus, tfds_dir, 1)
    data = utils.load_data(config.data, CharTokenizer(), 4)
    assert canary_utterances.insert(config, data, CharTokenizer(), None) == (data, None)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("users", 5, r"config\.audit\.utterances\.users=5 exceeds the 3 training users"),
        ("speedup", 1.0, r"config\.audit\.utterances\.speedup=1\.0 must be > 1"),
        ("repeats", (0, 4), r"config\.audit\.utterances\.repeats=\(0, 4\) must be"),
        ("candidates", 1, r"config\.audit\.utterances\.candidates=1"),
    ],
)
def test_bad_settings_name_the_field(tiny_corpus, tfds_dir, tmp_path, field, value, message):
    config = with_canaries(small_config(tiny_corpus, tfds_dir, 1), **{field: value})
    if field == "users":
        config.audit.utterances.per_repeat = 3  # 6 inserted canaries, 5 users
    with pytest.raises(ValueError, match=message):
        train_fl.train(config, str(tmp_path))


def test_fl_trainer_on_the_librispeech_layout_measures_flac_canaries(
    tiny_corpus, tfds_dir, tmp_path
):
    config = with_canaries(small_config(tiny_corpus, tfds_dir, 1), repeats=(4,), users=1)
    config.data.name = "librispeech_local"
    config.data.train_config = config.data.train_split = "train-clean-100"
    config.data.eval_config = config.data.eval_split = "dev-clean"
    config.fl.cohort_size = 1
    summary = train_fl.train(config, str(tmp_path))
    manifest = read_json(tmp_path / "memorization" / "canaries.json")
    assert [c["repeats"] for c in manifest] == [4, 0]
    assert summary["memorization_r4/count"] == 1 and summary["population"] >= 1


def test_a_speedup_the_model_cannot_transcribe_is_refused(tiny_corpus, tfds_dir, tmp_path):
    config = with_canaries(small_config(tiny_corpus, tfds_dir, 1), speedup=12.0)
    with pytest.raises(ValueError, match=r"too fast .* config\.audit\.utterances\.speedup"):
        train_fl.train(config, str(tmp_path))


def overtrain_one_user(corpus, tfds_dir, noise_multiplier):
    """Two users, both in every round; one holds a canary 16 times; 10 local steps a round,
    FedAvg (server SGD, lr 1) from scratch: the canary's text gets a far lower loss than
    random texts of its format unless the noise drowns the updates."""
    config = small_config(corpus, tfds_dir, 6)
    config.data.max_users = 2
    config.fl.cohort_size = 2
    config.fl.local_steps = 10
    config.fl.local_learning_rate = 0.5
    config.server.optimizer, config.server.learning_rate = "sgd", 1.0
    config.dp.clipping, config.dp.clip_norm = "global", 1.0
    config.dp.noise_multiplier = noise_multiplier
    config.eval.every = 6
    config.checkpoint.every = 6
    return with_canaries(config, repeats=(16,), users=1, heldout=3, candidates=64)


def test_memorized_without_noise_and_not_under_strong_noise(tiny_corpus, tfds_dir, tmp_path):
    round_steps = {}  # both runs share one compiled round step (the noise is an argument)
    quiet = train_fl.train(
        overtrain_one_user(tiny_corpus, tfds_dir, 0.0), str(tmp_path / "quiet"), round_steps
    )
    noisy = train_fl.train(
        overtrain_one_user(tiny_corpus, tfds_dir, 20.0), str(tmp_path / "noisy"), round_steps
    )
    assert len(round_steps) == 1
    fit = "memorization_r16/exposure_fit_"
    memorized = quiet[fit + "inserted"] - quiet[fit + "heldout"]  # bits
    assert memorized > 5
    assert noisy[fit + "inserted"] - noisy[fit + "heldout"] < memorized - 5
    assert quiet["memorization_r16/loss_inserted"] < noisy["memorization_r16/loss_inserted"]


def tiny_recipes(corpus, tfds_dir, seed_dir):
    def fl():
        config = small_config(corpus, tfds_dir, 2)
        config.init_checkpoint = str(seed_dir / "checkpoints")
        config.fl.sampling = "poisson"
        config.dp.noise_multiplier = None
        return config

    def central():
        config = tiny_central_config(corpus, tfds_dir)
        config.model.num_blocks = 2
        return config

    return memorization.Recipes(fl, central)


def test_quick_study_runs_and_reports(tiny_corpus, tfds_dir, tmp_path):
    recipes = tiny_recipes(tiny_corpus, tfds_dir, tmp_path / "seed")
    # One DP method: three runs share two compiled round steps (no DP, per layer).
    study = dataclasses.replace(memorization.QUICK, methods=("per-layer by dim",))
    workdir = str(tmp_path / "study")
    results = memorization.run_all(study, workdir, recipes)

    assert list(results) == ["FL, no DP", "per-layer by dim, σ_DP=0.1", "central, no DP"]
    for name, summary in results.items():
        run = summary["workdir"]
        found = read_json(os.path.join(run, "memorization", "per_canary.json"))
        assert os.path.getsize(os.path.join(run, "memorization", "memorization.png")) > 10_000
        assert len(found["canaries"]) == 6  # 3 inserted (r = 1, 4, 16) + 3 held out
        manifest = read_json(os.path.join(run, "memorization", "canaries.json"))
        assert sorted(c["repeats"] for c in manifest) == [0, 0, 0, 1, 4, 16]
        metrics = read_jsonl(os.path.join(run, "metrics.jsonl"))
        steps = [r["step"] for r in metrics if "memorization/all/auc" in r]
        assert steps[-1] == 2, name  # measured after the last round (step)
        assert summary["memorization_r16/cer_inserted"] >= 0
    assert results["FL, no DP"]["epsilon_rdp"] is None
    assert results["per-layer by dim, σ_DP=0.1"]["epsilon_rdp"] > 0

    text = memorization.report(results, study, workdir, "cmd", 1.0)
    assert "| FL, no DP | ∞ |" in text and "| per-layer by dim, σ_DP=0.1 |" in text
    assert "r=16: CER inserted / held-out" in text
    assert os.path.getsize(os.path.join(workdir, "memorization.png")) > 10_000

    again = memorization.run_all(study, workdir, recipes)  # cached: nothing reruns
    assert {k: v["seconds"] for k, v in again.items()} == {
        k: v["seconds"] for k, v in results.items()
    }


def test_the_demo_config_has_the_section_off():
    u = fl_dp.get_config("demo").audit.utterances
    assert u.per_repeat == 0 and tuple(u.repeats) == (1, 4, 16) and u.speedup == 2.0
