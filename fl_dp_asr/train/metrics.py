"""Metric writers: one JSON line per record plus TensorBoard scalars.

Nested metric dicts become slash-separated names, the same in both: a per-layer norm is
``train/layer_delta_norms/block_00/mlp/kernel`` (layer names from
:func:`fl_dp_asr.dp.transforms.leaf_layer_name`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested dict of scalars → ``{"a/b": float}``."""
    flat: dict[str, float] = {}
    for name, value in metrics.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, key + "/"))
        else:
            flat[key] = float(np.asarray(value))
    return flat


class MetricWriter:
    """Appends records to ``<workdir>/metrics.jsonl`` and to TensorBoard event files.

    A resumed run appends; records of rounds after the resume point that an interrupted
    run had written are dropped first, so the file tells one consistent history.
    ``enabled=False`` writes nothing (the processes other than 0 of a multi-process run).
    """

    def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter  # heavy import, only where metrics are written

        os.makedirs(workdir, exist_ok=True)
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._truncate_after(resume_step)
        self._jsonl = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 -- closed by close()
        self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        kept = [line for line in read_jsonl(self.path) if line["step"] <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(line) + "\n" for line in kept)
        os.replace(tmp, self.path)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        flat = flatten(metrics)
        record = {"step": int(step)} | {
            k: (v if math.isfinite(v) else str(v)) for k, v in flat.items()
        }
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in flat.items():
            self._tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        self._tensorboard.close()


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Records of a metrics file (a torn last line from a crash is skipped)."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
