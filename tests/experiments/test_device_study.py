"""The device preset cannot rot: its dry run (toy size, CPU) is the whole call of the GPU."""

import dataclasses
import json
import shutil
import time

import pytest

from experiments import device_study
from experiments.device import carry, workers
from experiments.device import preset as presets
from experiments.device.report import Report
from experiments.replication import cell_run, design


def test_dry_run_runs_every_planned_cell_and_reports_both_levels(tiny_corpus, tfds_dir, tmp_path):
    out = tmp_path / "out"
    report = device_study.run(
        presets.DRY_RUN,
        out,
        str(tmp_path / "work"),
        600.0,
        corpus=str(tiny_corpus),
        data_dir=str(tfds_dir),
        compile_cache=False,
    )  # keep the test session's cache

    saved = json.loads((out / "device_study.json").read_text())
    planned = [cell.name for plan in report.plans for cell in plan]
    assert [c["name"] for c in saved["cells"]] == planned
    assert len(planned) == 3  # no DP + global at two levels
    assert {c["status"] for c in saved["cells"]} == {"done"}
    assert list(saved["stages"]) == ["corpus", "TFDS datasets", "seed", "cells", "whole call"]
    text = (out / "device_study.md").read_text()
    for level, sigma in zip(presets.DRY_RUN.levels, report.sigmas):
        assert sigma == pytest.approx(level / saved["num_params"] ** 0.5, rel=0.03)  # 2 digits
        assert f"| {level:g} | {sigma:.4g} |" in text
        assert f"σ_DP·√D = {level:g}" in text
    assert "| no DP | CER" in text and "| global |  | CER" in text  # no noise: no DP only
    assert "Detectability: at σ_DP·√D = 108" in text
    global_runs = [c["result"] for c in saved["cells"] if c["method"] == "global"]
    assert all(r["extrapolated_epsilon_rdp"] > 0 for r in global_runs)
    assert sorted(r["sigma_dp"] for r in global_runs) == sorted(report.sigmas)

    # Cell by cell: a cell run alone (--cell) joins the others in the report (--report).
    again = report.plans[0][-1]
    shutil.rmtree(cell_run.cell_dir(report.workdir, again, report.study))
    device_study.main(
        ["--dry-run", "--report", "--workdir", str(tmp_path / "work"), "--out", str(out)]
    )
    statuses = [c["status"] for c in json.loads((out / "device_study.json").read_text())["cells"]]
    assert statuses == ["done", "done", "not run"]
    device_study.run(
        presets.DRY_RUN,
        out,
        str(tmp_path / "work"),
        600.0,
        corpus=str(tiny_corpus),
        data_dir=str(tfds_dir),
        compile_cache=False,
        cell=design.cell_id(again, report.study),
    )
    cells = json.loads((out / "device_study.json").read_text())["cells"]
    assert [c["status"] for c in cells] == ["done"] * 3
    assert grid((out / "device_study.md").read_text()) == grid(text)


def grid(report: str) -> str:
    """The report's methods × noise level table."""
    return report.split("## Methods × noise level", 1)[1].split("##", 1)[0]


def test_list_cells_names_the_planned_cells_and_a_bad_id_is_refused(capsys):
    device_study.main(["--dry-run", "--list-cells"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith(
        "no_DP__s0__seed0__S2__d4__lamb__T2\tworker 0: no DP, seed 0, cohort 2, "
    )
    ids = [line.split("\t")[0] for line in lines]
    with pytest.raises(SystemExit, match="2"):
        device_study.main(["--dry-run", "--cell", "global__s0.5"])
    err = capsys.readouterr().err
    assert "unknown cell 'global__s0.5'; the 3 cells" in err and all(i in err for i in ids)


def test_a_worker_skips_the_cells_its_budget_cannot_hold(tmp_path, monkeypatch):
    monkeypatch.setattr(cell_run, "run_cell", lambda *a: pytest.fail("a cell ran"))
    preset = presets.DRY_RUN
    plans = workers.plan_workers(preset, [1e-3, 0.1], 1)
    report = Report(
        preset,
        "dry",
        str(tmp_path),
        tmp_path / "out",
        1.0,
        params=1000,
        sigmas=[1e-3, 0.1],
        plans=plans,
    )

    workers.run_worker(
        plans[0],
        report.study,
        str(tmp_path),
        None,
        deadline=time.time() + 4.0,
        first_cell_s=5.0,
        compile_cache=False,
        on_cell=report.write,
    )

    cells = json.loads((tmp_path / "out" / "device_study.json").read_text())["cells"]
    assert [c["status"] for c in cells] == ["skipped"] * 3
    assert all(c["reason"].startswith("budget: ") for c in cells)
    assert "| skipped | " in (tmp_path / "out" / "device_study.md").read_text()


def test_a_failing_cell_is_noted_and_the_next_one_runs(tmp_path, monkeypatch):
    ran = []

    def broken(cell, *args):
        ran.append(cell.name)
        raise ValueError("boom\nmore lines")

    monkeypatch.setattr(cell_run, "run_cell", broken)
    plans = workers.plan_workers(presets.DRY_RUN, [1e-3, 0.1], 1)
    study = presets.study(presets.DRY_RUN, [1e-3, 0.1])

    workers.run_worker(
        plans[0],
        study,
        str(tmp_path),
        None,
        deadline=time.time() + 60,
        first_cell_s=1.0,
        compile_cache=False,
    )

    assert ran == [cell.name for cell in plans[0]]
    assert [workers.cell_status(str(tmp_path), cell, study) for cell in plans[0]] == [
        ("failed", {"reason": "ValueError: boom"})
    ] * 3


def test_workers_take_whole_methods_seed_by_seed():
    preset = dataclasses.replace(presets.DEVICE, seeds=2)
    plans = workers.plan_workers(preset, [1e-5, 1e-2], 3)
    assert [sorted({c.method for c in plan}) for plan in plans] == [
        ["no DP", "per-layer uniform"],
        ["global", "rescale per-layer"],
        ["per-layer by dim"],
    ]
    assert [(c.seed, c.sigma_dp) for c in plans[1][:4]] == [
        (0, 1e-5),
        (0, 1e-2),
        (1, 1e-5),
        (1, 1e-2),
    ]
    assert all(c.depth == 36 and c.cohort == preset.cohort for p in plans for c in p)


def test_a_later_cell_is_estimated_without_the_first_rounds_compilation(tmp_path):
    records = [{"step": r + 1, "train/seconds_per_round": s} for r, s in enumerate([9.0, 1.0, 1.0])]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    assert workers.next_cell_estimate({"workdir": str(tmp_path), "seconds": 14.0}) == 6.0


def test_the_device_call_carries_the_wheels_and_corpus_and_fits_its_limit():
    command = carry.device_command()
    assert command.startswith("python3 -m pip install -q --no-index --no-deps")
    assert "--out $OUT" in command and "--budget-s" not in command
    assert carry.carry() == [".whl", "data/device_corpus"]
    assert carry.DEVICE_TIMEOUT_S <= 480
    assert presets.DEVICE.levels == pytest.approx((0.16, 108.0), rel=1e-3)
    assert presets.DEVICE.depth == 36
