"""The device preset cannot rot: its dry run (toy size, CPU) is the whole call of the GPU."""

import dataclasses
import json
import time

import pytest

from experiments import device_study, replicate


def test_dry_run_runs_every_planned_cell_and_reports_both_levels(tiny_corpus, tfds_dir,
                                                                 tmp_path):
    out = tmp_path / "out"
    report = device_study.run(device_study.DRY_RUN, out, str(tmp_path / "work"), 600.0,
                              corpus=str(tiny_corpus), data_dir=str(tfds_dir),
                              compile_cache=False)   # keep the test session's cache

    saved = json.loads((out / "device_study.json").read_text())
    planned = [cell.name for plan in report.plans for cell in plan]
    assert [c["name"] for c in saved["cells"]] == planned
    assert len(planned) == 3                       # no DP + global at two levels
    assert {c["status"] for c in saved["cells"]} == {"done"}
    assert list(saved["stages"]) == ["corpus", "TFDS datasets", "seed", "cells", "whole call"]
    text = (out / "device_study.md").read_text()
    for level, sigma in zip(device_study.DRY_RUN.levels, report.sigmas):
        assert sigma == pytest.approx(level / saved["num_params"] ** 0.5, rel=0.03)  # 2 digits
        assert f"| {level:g} | {sigma:.4g} |" in text
        assert f"σ_DP·√D = {level:g}" in text
    assert "| no DP | CER" in text and "| global |  | CER" in text   # no noise: no DP only
    assert "Detectability: at σ_DP·√D = 108" in text
    global_runs = [c["result"] for c in saved["cells"] if c["method"] == "global"]
    assert all(r["extrapolated_epsilon_rdp"] > 0 for r in global_runs)
    assert sorted(r["sigma_dp"] for r in global_runs) == sorted(report.sigmas)


def test_a_worker_skips_the_cells_its_budget_cannot_hold(tmp_path, monkeypatch):
    monkeypatch.setattr(replicate, "run_cell", lambda *a: pytest.fail("a cell ran"))
    preset = device_study.DRY_RUN
    plans = device_study.plan_workers(preset, [1e-3, 0.1], 1)
    report = device_study.Report(preset, "dry", str(tmp_path), tmp_path / "out", 1.0,
                                 params=1000, sigmas=[1e-3, 0.1], plans=plans)

    device_study.run_worker(plans[0], report.study, str(tmp_path), None,
                            deadline=time.time() + 4.0, first_cell_s=5.0,
                            compile_cache=False, on_cell=report.write)

    cells = json.loads((tmp_path / "out" / "device_study.json").read_text())["cells"]
    assert [c["status"] for c in cells] == ["skipped"] * 3
    assert all(c["reason"].startswith("budget: ") for c in cells)
    assert "| skipped | " in (tmp_path / "out" / "device_study.md").read_text()


def test_a_failing_cell_is_noted_and_the_next_one_runs(tmp_path, monkeypatch):
    ran = []

    def broken(cell, *args):
        ran.append(cell.name)
        raise ValueError("boom\nmore lines")
    monkeypatch.setattr(replicate, "run_cell", broken)
    plans = device_study.plan_workers(device_study.DRY_RUN, [1e-3, 0.1], 1)
    study = device_study.study(device_study.DRY_RUN, [1e-3, 0.1])

    device_study.run_worker(plans[0], study, str(tmp_path), None, deadline=time.time() + 60,
                            first_cell_s=1.0, compile_cache=False)

    assert ran == [cell.name for cell in plans[0]]
    assert [device_study.cell_status(str(tmp_path), cell, study) for cell in plans[0]] == [
        ("failed", {"reason": "ValueError: boom"})] * 3


def test_workers_take_whole_methods_seed_by_seed():
    preset = dataclasses.replace(device_study.DEVICE, seeds=2)
    plans = device_study.plan_workers(preset, [1e-5, 1e-2], 3)
    assert [sorted({c.method for c in plan}) for plan in plans] == [
        ["no DP", "per-layer uniform"], ["global", "rescale per-layer"], ["per-layer by dim"]]
    assert [(c.seed, c.sigma_dp) for c in plans[1][:4]] == [(0, 1e-5), (0, 1e-2), (1, 1e-5),
                                                             (1, 1e-2)]
    assert all(c.depth == 36 and c.cohort == preset.cohort for p in plans for c in p)


def test_a_later_cell_is_estimated_without_the_first_rounds_compilation(tmp_path):
    records = [{"step": r + 1, "train/seconds_per_round": s} for r, s in enumerate([9.0, 1.0, 1.0])]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    assert device_study.next_cell_estimate({"workdir": str(tmp_path), "seconds": 14.0}) == 6.0


def test_the_device_call_carries_the_wheels_and_corpus_and_fits_its_limit():
    command = device_study.device_command()
    assert command.startswith("python3 -m pip install -q --no-index --no-deps")
    assert "--out $OUT" in command and "--budget-s" not in command
    assert device_study.carry() == [".whl", "data/device_corpus"]
    assert device_study.DEVICE_TIMEOUT_S <= 480
    assert device_study.DEVICE.levels == pytest.approx((0.16, 108.0), rel=1e-3)
    assert device_study.DEVICE.depth == 36
