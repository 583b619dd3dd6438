"""Empirical privacy with canary clients: it measures something (ε_empirical falls as σ_DP
grows and stays within reach of ε_accounted, large without noise), it catches a mechanism
whose code path drops the noise or the clipping while its accountant does not, and the FL
trainer reports both estimates, also after a resume."""

import itertools
import math
import os

import pytest

from experiments import audit_sweep, train_fl
from fl_dp_asr.dp import transforms
from fl_dp_asr.dp.policy import DPConfig
from fl_dp_asr.train.metrics import read_jsonl
from tests.experiments.test_train_fl import assert_check_config_refuses, small_config

TOY = audit_sweep.Setting(rounds=20, dims=2000, canaries=40)
SIGMAS = (0.0, 0.05, 0.2, 1.0)


@pytest.fixture(scope="module")
def sweep():
    return audit_sweep.make_sweep(TOY)


@pytest.fixture(scope="module")
def rows(sweep):
    return [audit_sweep.run(sweep, sigma) for sigma in SIGMAS]


@pytest.mark.parametrize("view", ["final_model", "all_iterates"])
def test_empirical_epsilon_falls_with_the_noise_and_is_large_without(rows, view):
    estimates = [row[f"epsilon_{view}"] for row in rows]
    assert all(a > b for a, b in itertools.pairwise(estimates)), estimates
    assert estimates[0] > 3 and estimates[0] > 3 * estimates[-1]
    for row in rows[1:]:  # below the accountant, up to the estimate's own interval
        assert row[f"epsilon_{view}_ci_low"] <= row["epsilon_accounted"], row


def test_a_step_without_its_noise_is_caught(sweep, rows):
    """The accountant is told σ_DP = 0.2 (ε ≈ 0.5); the step adds nothing."""
    broken = audit_sweep.run(sweep, 0.2, noise_stddev=0.0)
    assert broken["epsilon_all_iterates_ci_low"] > broken["epsilon_accounted"]
    assert broken["epsilon_all_iterates"] > 2 * rows[2]["epsilon_all_iterates"]


def test_a_step_without_its_clipping_is_caught(monkeypatch):
    """The clipping transform of the code path lets every delta through (the canaries send
    10 C); DPConfig, the noise std z·C and the accountant still assume C."""
    monkeypatch.setattr(
        DPConfig,
        "clipping_transform",
        lambda self, layout=transforms.SAME_LAYOUT: transforms.clip_by_global_norm(
            math.inf, layout
        ),
    )
    broken = audit_sweep.run(audit_sweep.make_sweep(TOY), 0.2)
    assert broken["clip_fraction"] == 0.0
    assert broken["epsilon_all_iterates_ci_low"] > broken["epsilon_accounted"]


def test_the_sweep_script_writes_its_plot_and_readme_table(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{audit_sweep.BEGIN}\nold\n{audit_sweep.END}\nafter\n")
    audit_sweep.main(
        [
            "--sigmas",
            "0,0.1",
            "--rounds",
            "2",
            "--dims",
            str(TOY.dims),
            "--canaries",
            str(TOY.canaries),  # the fixture's compiled program
            "--out",
            str(tmp_path / "sweep.png"),
            "--readme",
            str(readme),
        ]
    )
    text = readme.read_text()
    assert (tmp_path / "sweep.png").stat().st_size > 0
    assert "old" not in text and text.startswith("before") and text.endswith("after\n")
    assert "| 0.1 |" in text and "ε all iterates" in text


def audit_config(corpus, tfds_dir, rounds):
    c = small_config(corpus, tfds_dir, rounds)
    c.audit.canaries = 3  # 3 users + 3 canaries, 2 drawn per round
    c.audit.heldout = 4
    return c


def test_the_trainer_reports_both_estimates_after_a_resume(tiny_corpus, tfds_dir, tmp_path, capsys):
    """Stopped after round 1, resumed to 2: the trail comes back from the checkpoint and the
    end of the run reports both estimates (its JSON round trip is exact: test_round_canaries).
    Two runs, not three (an uninterrupted one to compare with): the ASR step with canaries is
    the slowest compilation of these tests."""
    round_steps = {}
    train_fl.train(audit_config(tiny_corpus, tfds_dir, 1), str(tmp_path), round_steps)
    summary = train_fl.train(audit_config(tiny_corpus, tfds_dir, 2), str(tmp_path), round_steps)
    assert len(round_steps) == 1 and summary["rounds"] == 2
    assert summary["population"] == 3 and summary["audit_canaries"] == 3
    for view in ("final_model", "all_iterates"):
        assert summary[f"audit_epsilon_{view}"] >= 0
    assert summary["epsilon_rdp"] > 0
    out = capsys.readouterr().out
    assert "Empirical privacy (3 canaries, 4 held out" in out
    assert "a leak is flagged (CI above it) half the time at ε ≈ " in out  # its power
    last = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))[-1]
    assert last["step"] == 2 and "audit/epsilon_all_iterates_ci_high" in last


@pytest.mark.parametrize(
    "change, message",
    [
        ({"audit.canaries": 1}, "canaries=1: canaries: inserted=1 must be an integer >= 2"),
        ({"dp.target_unclipped_quantile": 0.5}, "canaries=3: .*fixed clip bounds"),
        ({"dp.clipping": "none", "dp.noise_multiplier": None}, "canaries=3: .*needs clipping"),
        ({"distributed.num_processes": 2}, "single-process run"),
    ],
)
def test_config_mistakes_of_the_audit_are_named(tiny_corpus, tfds_dir, change, message):
    assert_check_config_refuses(audit_config(tiny_corpus, tfds_dir, 1), change, message)
