"""The device check cannot rot: its dry run (tiny shapes, CPU) runs every measuring section."""

from __future__ import annotations

import time

import jax
import pytest

from benchmarks import common, device_check
from fl_dp_asr.aot import targets
from fl_dp_asr.models.config import get_model_config


def test_dry_run_measures_every_section(tmp_path, monkeypatch):
    # Keep the test session's compilation cache (the benchmark would switch to its own).
    monkeypatch.setenv(common.CACHE_ENV, jax.config.jax_compilation_cache_dir)
    out = tmp_path / "device_check.md"
    report = device_check.main(["--dry-run", "--no-write", "--profile", "--out", str(out)])
    captions = [caption for caption, _ in report.tables]
    assert [c.split(",")[0].split(" (")[0] for c in captions] == [
        "One client's local step",
        "Round step",
        "Profile of the vectorized round",
        "Round step",
    ]
    for caption, table in report.tables:
        rows = table.splitlines()[2:]
        assert rows, caption
        assert all("out of memory" not in row for row in rows)
    paper_round = report.tables[1][1].splitlines()[2:]
    assert "largest that fits" in paper_round[0] and "sequential" in paper_round[1]
    assert "round MFU" in report.tables[1][1] and "n/a" in paper_round[0]  # CPU: no peak
    top_ops = report.tables[2][1].splitlines()[2:]
    assert all(float(row.split("|")[2]) > 0 for row in top_ops)
    assert any("parameters created on the device" in n for n in report.notes)
    assert not [n for n in report.notes if "FAILED" in n or "SKIPPED" in n], report.notes
    assert out.read_text() == report.markdown()


def test_a_section_past_the_budget_is_skipped_with_a_note(monkeypatch):
    ran = []
    monkeypatch.setattr(device_check, "section_local_step", lambda *a: ran.append("local"))
    report = device_check.run(
        device_check.DRY_RUN, budget_s=-1.0, only=["local step", "paper round"]
    )
    assert ran == []
    assert [n.split(":")[0] for n in report.notes if "SKIPPED" in n] == [
        "section 'local step' SKIPPED",
        "section 'paper round' SKIPPED",
    ]


def test_rows_past_the_budget_are_skipped_within_a_section(monkeypatch):
    """The budget is checked before every row: a section that started in time does not run
    past it (nothing more is compiled)."""

    def slow_init(*args):
        time.sleep(0.3)
        return 1.0

    monkeypatch.setattr(device_check, "init_seconds", slow_init)
    monkeypatch.setattr(device_check, "local_step", lambda *a, **k: pytest.fail("compiled"))
    report = device_check.run(device_check.DRY_RUN, budget_s=0.2, only=["local step"])
    skipped = [n.split(" SKIPPED")[0] for n in report.notes if "SKIPPED" in n]
    assert skipped == ["local step 2 × 1 s, remat keeps nothing"]
    assert report.tables[0][1].splitlines()[2:] == []


def test_an_executor_past_the_budget_is_not_compiled():
    asked, rows = [], []
    plan = device_check.DRY_RUN
    one_round = device_check.compare_executors(
        "tiny",
        plan.task_args("tiny"),
        4,
        (4, 2),
        plan.round_shape,
        1,
        rows.append,
        search=True,
        over_budget=lambda what: asked.append(what) or True,
    )
    assert one_round is None and rows == []
    assert asked == ["round tiny/4, vectorized chunk 4"]


def test_the_paper_models_init_gets_model_overrides_only():
    plan = device_check.Plan()
    assert plan.task_args("paper")["padding_cuts"] == (1, 1)
    assert plan.task_args("tiny")["padding_cuts"] == (3, 2)
    assert device_check.DRY_RUN.task_args("tiny")["padding_cuts"] == (1, 1)
    # what the init section builds the paper model with: a model config, no cuts in it
    config = get_model_config("paper", **plan.model_overrides("paper"))
    assert config.remat and config.layer_drop_rate == 0.0


def test_round_model_flops_count_every_real_step_of_every_client():
    shape = device_check.Plan().round_shape
    frames = device_check.round_frames(shape, 16, 0.03)
    assert frames == 16 * 10 * 8 * 8.0 / 0.03
    assert targets.model_flops(10, frames) == 6 * 10 * frames


def oom(chunk):
    raise RuntimeError(f"RESOURCE_EXHAUSTED: Out of memory while trying to allocate chunk {chunk}")


def test_largest_fitting_falls_back_to_the_next_smaller_chunk():
    def attempt(chunk):
        if chunk > 4:
            oom(chunk)
        return f"ran {chunk}"

    chunk, result, notes = device_check.largest_fitting((1, 16, 4, 8), attempt)
    assert (chunk, result) == (4, "ran 4")
    assert [n.split(":")[0] for n in notes] == ["16", "8"]


def test_largest_fitting_says_when_nothing_fits_and_passes_other_errors_through():
    with pytest.raises(RuntimeError, match=r"nothing fits in device memory; tried \[2, 1\]"):
        device_check.largest_fitting((1, 2), oom)

    def broken(chunk):
        raise ValueError("shapes do not match")

    with pytest.raises(ValueError, match="shapes"):
        device_check.largest_fitting((1, 2), broken)


@pytest.mark.parametrize(
    "kind, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA GH200 480GB", 989.0),
        ("NVIDIA B200", 2250.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA A10G", 70.0),
        ("TPU v4", 275.0),
        ("TPU v5 lite", 197.0),
        ("TPU v5p", 459.0),
        ("TPU v5", 459.0),
        ("TPU v6 lite", 918.0),
        ("cpu", None),
    ],
)
def test_peak_by_device_kind(kind, peak):
    assert device_check.peak_tflops(kind) == peak
