"""`python -m experiments.replicate --quick` on the tiny corpus: every stage, the report."""

import contextlib
import dataclasses
import functools
import json
import shutil
import types

import jax
import pytest

from experiments import replicate
from experiments.replication import cell_run, design, schedule, tables
from experiments.replication import report as report_lib
from fl_dp_asr.dp.policy import DPConfig
from tests.experiments.test_demo import tiny_central_config
from tests.experiments.test_train_fl import small_config


def tiny_fl(corpus, tfds_dir):
    config = small_config(corpus, tfds_dir, 2)
    config.fl.sampling = "poisson"
    config.dp.noise_multiplier = None
    config.dp.target_cohort, config.dp.target_population = 20, 30
    return config


def test_quick_study_runs_every_cell_once_and_reports(
    tiny_corpus, tfds_dir, tmp_path, monkeypatch, capsys
):
    # One σ level keeps it to three compiled round steps (no DP, global, per layer).
    study = dataclasses.replace(design.QUICK, sigmas=(0.03,), cohort=2, seed_steps=2)
    recipes = cell_run.Recipes(
        functools.partial(tiny_central_config, tiny_corpus, tfds_dir),
        functools.partial(tiny_fl, tiny_corpus, tfds_dir),
    )
    stages = list(design.STAGES)
    # Two worker processes (this one and a spawned one) share the cells.
    results = schedule.run_study(study, stages, str(tmp_path / "study"), recipes, workers=2)

    cells = {(r["method"], r["sigma_dp"]) for r in results}
    assert cells == {("no DP", 0.0), ("global", 0.03), ("per-layer by dim", 0.03)}
    assert len(results) == len(cells) + 1  # + the longer no-DP curve
    assert [r["rounds"] for r in results if r["rounds"]] == [study.curve_rounds]
    noisy = [r for r in results if r["sigma_dp"] > 0]
    assert all(r["noise_multiplier"] == pytest.approx(2 * 0.03) for r in noisy)
    assert all(r["extrapolated_epsilon_rdp"] > 0 for r in noisy)
    assert all(r["clipping"] == "none" for r in results if r["method"] == "no DP")

    out = tmp_path / "docs" / "replication.md"
    text = report_lib.report(results, study, str(out), 1.0)
    assert "| global | CER" in text and "| per-layer by dim | CER" in text
    assert "σ_DP = 0.03" in text and "signal vs noise" in text and "Detectability: " in text
    assert "no DP: held-out CER by round: 0: " in text
    for module in ("block_00/attention/query", "output"):
        assert f"| {module} |" in text
    figures = tmp_path / "docs" / "replication"
    for name in (
        "cer_vs_epsilon.png",
        "curves.png",
        "delta_norms_global.png",
        "clip_bounds_per-layer_by_dim.png",
    ):
        assert (figures / name).stat().st_size > 1000

    claims = sorted(p.name for p in (tmp_path / "study" / "claims").iterdir())
    assert claims == sorted(p.name for p in (tmp_path / "study" / "cells").iterdir())

    # Cell by cell, as a cluster's scheduler runs them (--cell), merged by --report: the
    # report of the one-shot command (every cell done: read back), but for the wall time.
    monkeypatch.setattr(replicate, "QUICK", study)
    monkeypatch.setattr(replicate, "Recipes", lambda: recipes)
    workdir = tmp_path / "study"
    command = [
        "--quick",
        "--workdir",
        str(workdir),
        "--workers",
        "1",
        "--seed-checkpoint",
        str(tmp_path / "no_demo_seed"),
    ]
    replicate.main(command)
    one_shot = (workdir / "replication.md").read_text()
    rerun = next(c for c in design.study_cells(study, stages) if c.method == "global")
    shutil.rmtree(cell_run.cell_dir(str(workdir), rerun, study))
    capsys.readouterr()
    replicate.main([*command, "--report"])
    assert (
        f"report: 3 of 4 cells done; missing (run them with --cell ID):\n"
        f"{design.cell_id(rerun, study)}\n"
    ) in capsys.readouterr().out
    replicate.main([*command, "--cell", design.cell_id(rerun, study)])
    replicate.main([*command, "--report"])
    assert "report: 4 of 4 cells done\n" in capsys.readouterr().out
    assert without_wall_time((workdir / "replication.md").read_text()) == without_wall_time(
        one_shot
    )
    # A second call reads every cell back instead of training it again.
    monkeypatch.setattr(cell_run.train_fl, "train", lambda *a: pytest.fail("retrained"))
    again = schedule.run_study(study, stages, str(tmp_path / "study"), recipes)
    assert [r["final_cer"] for r in again] == [r["final_cer"] for r in results]


def without_wall_time(report: str) -> str:
    """The report less its header's line of wall times (a cell run again takes its own)."""
    return "\n".join(line for line in report.splitlines() if " min of wall time" not in line)


def test_list_cells_prints_each_cell_id_and_what_it_runs(capsys):
    replicate.main(["--quick", "--list-cells"])
    lines = capsys.readouterr().out.splitlines()
    cells = design.study_cells(design.QUICK, list(design.STAGES))
    assert [line.split("\t")[0] for line in lines] == [
        design.cell_id(cell, design.QUICK) for cell in cells
    ]
    assert len(set(lines)) == len(lines) == 6
    assert lines[1] == (
        "global__s0.03__seed0__S16__d4__lamb__T2\tglobal, σ_DP = 0.03, seed 0, "
        "cohort 16, 4 blocks, LAMB server, 2 rounds"
    )
    assert lines[2].startswith("no_DP__s0__seed0__S16__d4__lamb__T4\tno DP, seed 0, ")


def test_an_unknown_cell_is_a_clear_error_listing_the_valid_ids(capsys, tmp_path):
    with pytest.raises(SystemExit, match="2"):
        replicate.main(["--quick", "--workdir", str(tmp_path), "--cell", "global__s9"])
    err = capsys.readouterr().err
    assert "unknown cell 'global__s9'; the 6 cells of these stages (--list-cells) are:" in err
    assert all(
        design.cell_id(cell, design.QUICK) in err
        for cell in design.study_cells(design.QUICK, list(design.STAGES))
    )
    assert not any(tmp_path.iterdir())  # nothing ran
    with pytest.raises(SystemExit, match="no cell of these stages is done in"):
        replicate.main(["--quick", "--workdir", str(tmp_path), "--report"])


def test_the_data_is_prepared_once_before_the_workers_start(tmp_path, monkeypatch):
    events = []

    class Process:  # a spawned worker
        exitcode = 0

        def __init__(self, target, args):
            pass

        def start(self):
            events.append("spawn")

        def join(self):
            pass

    monkeypatch.setattr(cell_run, "seed_checkpoint", lambda *a: None)
    monkeypatch.setattr(
        schedule.utils, "prepare_data", lambda data: events.append(("data", data.manual_dir))
    )
    monkeypatch.setattr(
        schedule.multiprocessing,
        "get_context",
        lambda method: types.SimpleNamespace(Process=Process),
    )
    monkeypatch.setattr(schedule, "_work", lambda *a: events.append("work"))
    recipes, cell = cell_run.Recipes(), design.Cell("no DP", 0.0)
    corpus = recipes.fl().data.manual_dir

    schedule.run_in_parallel([cell], design.FULL, str(tmp_path), recipes, None, workers=2)

    assert events == [("data", corpus), "spawn", "work"]
    # every cell cached: nothing to prepare
    events.clear()
    done = tmp_path / "cells" / f"{cell.name}__T{design.FULL.rounds}" / "result.json"
    done.parent.mkdir(parents=True)
    done.write_text("{}")
    schedule.run_in_parallel([cell], design.FULL, str(tmp_path), recipes, None, workers=2)
    assert events == ["spawn", "work"]


def test_a_worker_does_not_compile_what_another_is_compiling():
    cold, same_program, other = (
        design.Cell("global", 0.1),
        design.Cell("global", 0.01),
        design.Cell("per-layer by dim", 0.1),
    )
    # cold's round step is compiling in another worker: run another program first ...
    assert schedule.next_cell([same_program, other], [], [cold]) == other
    assert schedule.next_cell([same_program], [], [cold]) is None  # ... or wait
    # once one cell of that program is done, the cache has it: any number can run
    warm = design.Cell("global", 0.0, seed=1)
    assert schedule.next_cell([same_program, other], [warm], [cold]) == same_program


def test_a_cell_stopped_by_a_signal_is_not_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(cell_run.train_fl, "train", lambda config, *a: {"rounds": 3})
    monkeypatch.setattr(cell_run, "seed_checkpoint", lambda *a: None)
    cell = design.Cell("no DP", 0.0)
    with pytest.raises(cell_run.StudyStopped, match="stopped after 3 of 20 rounds"):
        cell_run.run_cell(cell, design.FULL, str(tmp_path), cell_run.Recipes(), None)
    assert not (tmp_path / "cells").exists() or not any((tmp_path / "cells").rglob("result.json"))


def test_wall_time_counts_overlapping_cells_once(tmp_path):
    def result(method, ended, seconds):
        return {**dataclasses.asdict(design.Cell(method, 0.0)), "ended": ended, "seconds": seconds}

    # two workers: [0, 10] and [5, 20] overlap, then [30, 31] after a pause
    results = [
        result("global", 10.0, 10.0),
        result("no DP", 20.0, 15.0),
        result("per-layer by dim", 31.0, 1.0),
    ]
    assert report_lib.wall_seconds(results, str(tmp_path), design.QUICK) == 21.0


def test_unknown_stage_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        replicate.main(["--stages", "probe,gird"])
    assert "unknown stages ['gird']" in capsys.readouterr().err


def test_the_study_cache_is_undone_when_its_context_closes(tmp_path):
    """The study's compilation cache does not outlive it: the process's own comes back."""
    before = jax.config.jax_compilation_cache_dir
    with cell_run.compilation_cache(str(tmp_path)):
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla_cache")
    assert jax.config.jax_compilation_cache_dir == before


def test_deep_sigmas_flag_sets_the_deep_stages_levels(monkeypatch, capsys):
    def stop(study, *args, **kwargs):
        raise SystemExit(f"deep_high={study.deep_high}")

    monkeypatch.setattr(replicate, "compilation_cache", lambda workdir: contextlib.nullcontext())
    monkeypatch.setattr(replicate, "run_study", stop)
    with pytest.raises(SystemExit, match=r"deep_high=\(0.3,\)"):
        replicate.main(["--stages", "deep", "--deep-sigmas", "0.3"])
    with pytest.raises(SystemExit, match="2"):
        replicate.main(["--stages", "deep", "--deep-sigmas", "0.3,-1"])
    assert "'0.3,-1' is not a comma-separated list of σ_DP > 0" in capsys.readouterr().err


def test_hand_written_analysis_survives_regeneration(tmp_path):
    out = str(tmp_path / "replication.md")
    generated = "\n".join(
        ["# Study", "", report_lib.ANALYSIS_BEGIN, report_lib.ANALYSIS_END, "", "table v1", ""]
    )
    report_lib.write_markdown(generated, out, None)
    with open(out, encoding="utf-8") as f:
        edited = f.read().replace(
            report_lib.ANALYSIS_END, "Per-layer wins.\n" + report_lib.ANALYSIS_END
        )
    with open(out, "w", encoding="utf-8") as f:
        f.write(edited)
    report_lib.write_markdown(generated.replace("v1", "v2"), out, None)
    with open(out, encoding="utf-8") as f:
        text = f.read()
    assert "Per-layer wins." in text and "table v2" in text and "table v1" not in text


@pytest.mark.parametrize("num_bounds", [1, 7, 40])
@pytest.mark.parametrize("sigma_dp", [1e-3, 1e-2, 1e-1, 1.0])
def test_adaptive_rows_keep_the_delta_noise_within_six_percent(sigma_dp, num_bounds):
    cohort = 16
    z = sigma_dp * cohort
    dp = DPConfig(
        clipping="global", clip_norm=0.01, sigma_dp=sigma_dp, target_unclipped_quantile=0.5
    )
    stddev = cell_run.count_stddev_for_ratio(dp, cohort, num_bounds)
    dp = dataclasses.replace(dp, clipped_count_stddev=stddev)
    _, z_delta, z_count = dp.noise_multipliers(cohort, num_bounds)
    assert z_count >= cell_run.COUNT_NOISE_RATIO * z * (1 - 1e-9)
    assert z <= z_delta <= 1.061 * z
    assert stddev >= cohort / 20  # never below the default


def fake_run(tmp_path, method, depth, seed, cer, snr, sigma_dp=0.1):
    """A cell's result whose metrics give each module of ``snr`` that S/N."""
    workdir = tmp_path / f"{method}{depth}{seed}{sigma_dp:g}"
    workdir.mkdir()
    record = {"step": 1}
    for module, ratio in snr.items():
        record[f"{tables.SIGNAL}{module}/kernel"] = ratio * 1e-3
        record[f"{tables.NOISE}{module}/kernel"] = 1e-3
    (workdir / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    return dict(
        method=method,
        depth=depth,
        seed=seed,
        sigma_dp=0.0 if method == "no DP" else sigma_dp,
        server="lamb",
        cohort=16,
        rounds=None,
        final_cer=cer,
        final_wer=2 * cer,
        seed_cer=0.5,
        seed_wer=0.9,
        workdir=str(workdir),
    )


def test_depth_table_reports_the_gap_and_the_layer_snr_spread(tmp_path):
    run = functools.partial(fake_run, tmp_path)
    results = [run("no DP", 8, s, 0.30, {}) for s in (0, 1)]
    results += [run("global", 8, s, 0.40 + s / 100, {"a": 0.1, "b": 2.0}) for s in (0, 1)]
    results += [run("per-layer by dim", 8, s, 0.35, {"a": 0.3, "b": 0.4}) for s in (0, 1)]
    study = dataclasses.replace(design.FULL, depths=(4, 8))

    table = tables.depth_table(results, study, 0.1)

    row = next(line for line in table.splitlines() if line.startswith("| 8 |"))
    assert "| -5.5 |" in row  # 35.0 − 40.5 CER points
    assert "0.1 – 2 (20×)" in row and "0.3 – 0.4 (1.3×)" in row
    assert "| 4 |" not in table  # a depth with no runs has no row


def test_signal_noise_table_keeps_two_significant_digits_of_small_ratios():
    leaves = ("output/kernel", "norm/scale", "bias_only/bias")  # the table's rows: modules
    record = {f"{tables.DELTA}{leaf}": 0.1 for leaf in leaves}  # with a delta norm
    record |= {
        f"{tables.SIGNAL}output/kernel": 2.2e-4,
        f"{tables.NOISE}output/kernel": 0.1,
        f"{tables.SIGNAL}norm/scale": 3e-4,
        f"{tables.NOISE}norm/scale": 1e-3,
        f"{tables.SIGNAL}bias_only/bias": 1e-4,
    }

    table = tables.signal_noise_table({"global": [record]})

    assert "**0.0022**" in table  # not rounded to 0.00
    assert "**0.30**" in table  # trailing zero kept
    assert "**∞**" in table  # a module without noise


def test_deep_stage_matches_the_papers_noise_per_coordinate():
    study = dataclasses.replace(design.FULL, deep_depths=(2,))
    params = design.num_params(2)
    paper, *high = design.deep_sigmas(study, 2)
    assert high == [study.top, pytest.approx(3 * study.top)]
    assert design.PAPER_NOISE_PER_COORD[0] == pytest.approx(0.16, abs=5e-4)
    assert paper * params**0.5 == pytest.approx(0.16, rel=0.03)  # 2 digits
    cells = design.deep_cells(study)
    methods = study.deep_methods
    # no DP once per seed, every other row at all 3 levels; seed 0's cells come first, the
    # highest σ_DP first
    assert len(cells) == study.seeds * (1 + 3 * (len(methods) - 1)) == len(set(cells))
    assert [c.seed for c in cells] == sorted(c.seed for c in cells)
    assert {c.sigma_dp for c in cells if c.method == "global"} == {paper, *high}
    assert [c.sigma_dp for c in cells if c.method == "global" and c.seed == 0] == [
        *reversed(high),
        paper,
    ]
    assert {c.depth for c in cells} == {2}


def test_deep_section_is_rewritten_alone_and_survives_a_full_report(tmp_path):
    study = dataclasses.replace(design.FULL, deep_depths=(2,), seeds=1, deep_high=(0.1,))
    paper, top = design.deep_sigmas(study, 2)
    results = [fake_run(tmp_path, "no DP", 2, 0, 0.30, {})]
    results += [
        fake_run(tmp_path, m, 2, 0, cer, {"a": 0.1, "b": 2.0}, sigma)
        for m in study.deep_methods[1:]
        for sigma, cer in ((paper, 0.31), (top, 0.4))
    ]
    out = tmp_path / "replication.md"
    out.write_text("# Study\n\nanalysis\n\n## Methods × σ_DP\n\ngrid\n")

    block = report_lib.write_deep_section(results, study, str(out))

    text = out.read_text()
    assert text.index(report_lib.DEEP_BEGIN) < text.index("## Methods × σ_DP")
    assert "analysis" in text and "grid" in text and block in text
    assert f"σ_DP = {paper:g} (σ_DP·√D = 0.16)" in block
    assert "| global | CER 31.0 · WER 62.0 (n=1) | CER 40.0 · WER 80.0 (n=1) |" in block
    assert "| 0.1 | 82 | 110 |" in block  # σ_DP·√D at 2 and 4 blocks
    assert "| per-layer by dim | 0.1 – 2 (20×) | 0.1 – 2 (20×) |" in block  # 2 digits
    assert "| paper (D = 255.8 M) |" in block and "| 1e-05 |" in block
    # a report without deep results keeps the section (and the GPU preset's); a second
    # splice replaces it
    device = f"{report_lib.DEVICE_BEGIN}\nGPU plan\n{report_lib.DEVICE_END}"
    out.write_text(out.read_text() + "\n" + device + "\n")
    report_lib.write_markdown(
        f"# New\n\n{report_lib.DEEP_BEGIN}\n{report_lib.DEEP_END}\n\n"
        f"{report_lib.DEVICE_BEGIN}\n{report_lib.DEVICE_END}\n",
        str(out),
        None,
    )
    assert block in out.read_text() and "# New" in out.read_text() and device in out.read_text()
    results[0]["final_cer"] = 0.2
    report_lib.write_deep_section(results, study, str(out))
    assert out.read_text().count(report_lib.DEEP_BEGIN) == 1
    assert "| no DP | CER 20.0 · WER 60.0 (n=1)" in out.read_text()
