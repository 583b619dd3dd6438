"""Plots of a run's metrics: the clip-bound heat map appears exactly when bounds are logged."""

import json

import numpy as np

from experiments import plots


def write_metrics(run_dir, with_bounds: bool):
    run_dir.mkdir()
    with open(run_dir / "metrics.jsonl", "w") as f:
        for step in range(1, 6):
            record = {
                "step": step,
                "train/layer_delta_norms/block_00/mlp": 0.1 * step,
                "train/layer_delta_norms/output": 2.0,
            }
            if with_bounds:
                record |= {
                    "train/layer_clip_norms/block_00/mlp": 0.5 / step,
                    "train/layer_clip_norms/output": 1.0,
                }
            f.write(json.dumps(record) + "\n")


def test_clip_bound_heat_map_only_for_runs_that_log_bounds(tmp_path):
    write_metrics(tmp_path / "adaptive", with_bounds=True)
    write_metrics(tmp_path / "fixed_none", with_bounds=False)
    written = plots.make_plots(
        [str(tmp_path / "adaptive"), str(tmp_path / "fixed_none")], str(tmp_path / "out")
    )
    names = sorted(p.rsplit("/", 1)[1] for p in written)
    assert "clip_bounds_adaptive.png" in names and "clip_bounds_fixed_none.png" not in names
    assert "layer_norms_adaptive.png" in names and "layer_norms_fixed_none.png" in names


def test_bound_matrix_is_layers_by_rounds():
    records = [
        {"step": s, "train/layer_clip_norms/a": float(s), "train/layer_clip_norms/b": 1.0}
        for s in (1, 2, 3)
    ]
    layers, rounds, matrix = plots.layer_norm_matrix(records, plots.BOUND_PREFIX)
    assert layers == ["a", "b"] and rounds.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(matrix, [[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
