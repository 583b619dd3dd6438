"""`python -m experiments.replicate --quick` on the tiny corpus: every stage, the report."""

import dataclasses
import functools

import pytest

from experiments import replicate
from tests.experiments.test_demo import tiny_central_config
from tests.experiments.test_train_fl import small_config


def tiny_fl(corpus, tfds_dir):
    config = small_config(corpus, tfds_dir, 2)
    config.fl.sampling = "poisson"
    config.dp.noise_multiplier = None
    config.dp.target_cohort, config.dp.target_population = 20, 30
    return config


def test_quick_study_runs_every_cell_once_and_reports(tiny_corpus, tfds_dir, tmp_path,
                                                      monkeypatch):
    # One σ level keeps it to three compiled round steps (no DP, global, per layer).
    study = dataclasses.replace(replicate.QUICK, sigmas=(0.03,), cohort=2, seed_steps=2)
    recipes = replicate.Recipes(functools.partial(tiny_central_config, tiny_corpus, tfds_dir),
                                functools.partial(tiny_fl, tiny_corpus, tfds_dir))
    stages = list(replicate.STAGES)
    results = replicate.run_study(study, stages, str(tmp_path / "study"), recipes)

    cells = {(r["method"], r["sigma_dp"]) for r in results}
    assert cells == {("no DP", 0.0), ("global", 0.03), ("per-layer by dim", 0.03)}
    assert len(results) == len(cells) + 1     # + the longer no-DP curve
    assert [r["rounds"] for r in results if r["rounds"]] == [study.curve_rounds]
    noisy = [r for r in results if r["sigma_dp"] > 0]
    assert all(r["noise_multiplier"] == pytest.approx(2 * 0.03) for r in noisy)
    assert all(r["extrapolated_epsilon_rdp"] > 0 for r in noisy)
    assert all(r["clipping"] == "none" for r in results if r["method"] == "no DP")

    out = tmp_path / "docs" / "replication.md"
    text = replicate.report(results, study, str(out), 1.0)
    assert "| global | CER" in text and "| per-layer by dim | CER" in text
    assert "σ_DP = 0.03" in text and "signal vs noise" in text and "Detectability: " in text
    assert "Held-out CER by round: 0: " in text
    for module in ("block_00/attention/query", "output"):
        assert f"| {module} |" in text
    figures = tmp_path / "docs" / "replication"
    for name in ("cer_vs_epsilon.png", "no_dp_curve.png", "delta_norms_global.png",
                 "clip_bounds_per-layer_by_dim.png"):
        assert (figures / name).stat().st_size > 1000

    # A second call reads every cell back instead of training it again.
    monkeypatch.setattr(replicate.train_fl, "train", lambda *a: pytest.fail("retrained"))
    again = replicate.run_study(study, stages, str(tmp_path / "study"), recipes)
    assert [r["final_cer"] for r in again] == [r["final_cer"] for r in results]


def test_unknown_stage_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        replicate.main(["--stages", "probe,gird"])
    assert "unknown stages ['gird']" in capsys.readouterr().err


def test_hand_written_analysis_survives_regeneration(tmp_path):
    out = str(tmp_path / "replication.md")
    generated = "\n".join(["# Study", "", replicate.ANALYSIS_BEGIN, replicate.ANALYSIS_END,
                           "", "table v1", ""])
    replicate.write_markdown(generated, out, None)
    with open(out, encoding="utf-8") as f:
        edited = f.read().replace(replicate.ANALYSIS_END, "Per-layer wins.\n"
                                  + replicate.ANALYSIS_END)
    with open(out, "w", encoding="utf-8") as f:
        f.write(edited)
    replicate.write_markdown(generated.replace("v1", "v2"), out, None)
    with open(out, encoding="utf-8") as f:
        text = f.read()
    assert "Per-layer wins." in text and "table v2" in text and "table v1" not in text
