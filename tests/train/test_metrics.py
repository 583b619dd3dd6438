"""Metric writers: JSONL history, TensorBoard tags, disabled writers."""

import glob
import os

from fl_dp_asr.train.metrics import MetricWriter, read_jsonl


def test_resume_truncates_later_records_and_disabled_writer_writes_nothing(tmp_path):
    writer = MetricWriter(str(tmp_path))
    for step in (1, 2, 3):
        writer.write(step, {"train": {"loss": float(step), "norms": {"a/b": 0.5}}})
    writer.close()
    writer = MetricWriter(str(tmp_path), resume_step=2)  # an interrupted run resumed at 2
    writer.write(3, {"train": {"loss": 30.0}})
    writer.close()
    records = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
    assert [(r["step"], r["train/loss"]) for r in records] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    assert records[0]["train/norms/a/b"] == 0.5  # one slash-separated name

    quiet = tmp_path / "quiet"
    writer = MetricWriter(str(quiet), enabled=False)  # processes other than 0
    writer.write(1, {"train": {"loss": 1.0}})
    writer.close()
    assert not quiet.exists() or not any(quiet.iterdir())
    assert glob.glob(os.path.join(tmp_path, "tensorboard", "*"))
