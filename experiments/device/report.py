"""The device study's report: ``<out>/device_study.md`` and ``device_study.json``, read
back from the cells' files and rewritten whenever something changed (a call killed at its
limit still returns what it measured)."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

from benchmarks.common import markdown_table
from experiments.device.preset import Preset, central_config, study
from experiments.device.workers import cell_status
from experiments.replication import design, tables
from fl_dp_asr.train import utils


@dataclasses.dataclass
class Report:
    """The study under way: what is planned, each stage's time, read back from ``workdir``
    (the cells' own files) and written to ``out`` whenever it changed."""

    preset: Preset
    command: str
    workdir: str
    out: pathlib.Path | None
    budget_s: float
    params: int
    sigmas: list[float]
    plans: list[list[design.Cell]]
    stages: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    _written: str = ""

    @property
    def study(self) -> design.Study:
        return study(self.preset, self.sigmas)

    def stage(self, name: str, seconds: float, note: str = "") -> None:
        self.stages[name] = {"seconds": round(seconds, 1), "note": note}
        self.write()

    def cells(self) -> list[dict[str, Any]]:
        """Every planned cell: its fields, status, and result or skip reason."""
        rows = []
        for worker, plan in enumerate(self.plans):
            for cell in plan:
                status, found = cell_status(self.workdir, cell, self.study)
                rows.append(
                    {
                        **dataclasses.asdict(cell),
                        "name": cell.name,
                        "worker": worker,
                        "status": status,
                        **({"result": found} if status == "done" else found),
                    }
                )
        return rows

    def write(self) -> None:
        """Rewrites ``<out>/device_study.{md,json}`` if anything changed."""
        cells = self.cells()
        text = self.markdown(cells)
        if self.out is None or text == self._written:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        utils.write_text(str(self.out / "device_study.md"), text)
        utils.write_json(
            str(self.out / "device_study.json"),
            {
                "preset": dataclasses.asdict(self.preset),
                "command": self.command,
                "budget_s": self.budget_s,
                "num_params": self.params,
                "levels": [
                    {"sigma_dp_sqrt_d": level, "sigma_dp": sigma}
                    for level, sigma in zip(self.preset.levels, self.sigmas)
                ],
                "stages": self.stages,
                "cells": cells,
            },
        )
        self._written = text
        print(
            f"[device study] report: {sum(c['status'] == 'done' for c in cells)} of "
            f"{len(cells)} cells done",
            flush=True,
        )

    def markdown(self, cells: list[dict[str, Any]]) -> str:
        results = [c["result"] for c in cells if c["status"] == "done"]
        p = self.preset
        model = utils.model_config_from(central_config(p, "", "").model)
        parts = [
            f"# Depth {p.depth} on one GPU: global vs per-layer clipping (device preset)",
            "",
            f"`{self.command}` on {_device()}. Model: {model.num_blocks} blocks × "
            f"{model.model_dim} (MLP {model.mlp_dim}, {model.dtype} compute), "
            f"D = {self.params / 1e6:.2f} M parameters. Seed: the central demo recipe on the "
            f"LibriSpeech part (≤ {p.seed_steps} steps of {p.seed_batch} utterances, "
            f"≤ {p.seed_minutes:g} min). Cells: the FL demo recipe for {p.rounds} rounds, "
            f"Poisson cohorts of expected size S = {p.cohort} of "
            f"{p.corpus.common_voice[0].speakers} Common Voice-part users, {p.local_steps} "
            f"local steps of {p.local_batch} utterances, LAMB server. Final CER/WER on the "
            f"held-out users, mean ± std over seeds (n = runs). Budget {self.budget_s:.0f} s.",
            "",
            "## Timeline",
            "",
            markdown_table(
                ["stage", "seconds", "note"],
                [[name, s["seconds"], s["note"]] for name, s in self.stages.items()],
            ),
            "",
            "## Noise levels",
            "",
            self.levels_table(results),
            "",
            self.detectability(results),
            "",
            "## Methods × noise level",
            "",
            self.grid(results),
            "",
            _seed_line(results),
            "",
            "## Per-module signal/noise, seed 0",
            "",
            "Range over modules of signal ‖Σ clip(Δ)_h‖/S over noise ‖ξ_h‖/S (round "
            "means): min – max (max/min).",
            "",
            self.snr_grid(results),
            "",
            "## Cells",
            "",
            markdown_table(
                ["cell", "worker", "status", "seconds", "note"],
                [
                    [
                        c["name"],
                        c["worker"],
                        c["status"],
                        round(c["result"]["seconds"], 1) if c["status"] == "done" else "",
                        c.get("reason", ""),
                    ]
                    for c in cells
                ],
            ),
            "",
        ]
        return "\n".join(parts + self.signal_noise(results))

    def _runs(self, results: list[dict], method: str, sigma: float, **match) -> list[dict]:
        noise = {} if method == "no DP" else {"sigma_dp": sigma}
        return tables.select(
            results,
            method=method,
            depth=self.preset.depth,
            cohort=self.preset.cohort,
            server="lamb",
            **noise,
            **match,
        )

    def levels_table(self, results: list[dict]) -> str:
        rows = []
        for level, sigma in zip(self.preset.levels, self.sigmas):
            eps = [
                r["extrapolated_epsilon_rdp"]
                for r in results
                if r["sigma_dp"] == sigma and r.get("extrapolated_epsilon_rdp")
            ]
            rows.append(
                [
                    f"{level:g}",
                    f"{sigma:.4g}",
                    f"{self.preset.cohort * sigma:.4g}",
                    f"{eps[0]:.3g}" if eps else "–",
                ]
            )
        return markdown_table(
            ["σ_DP·√D", "σ_DP", "z = S·σ_DP", "ε (S' = 204,800, RDP, δ = 1e-9)"], rows
        )

    def detectability(self, results: list[dict]) -> str:
        """Whether global clipping at the highest level loses ≥ 5 CER points to no DP."""
        level, sigma = self.preset.levels[-1], self.sigmas[-1]
        base = self._runs(results, "no DP", 0.0)
        top = self._runs(results, "global", sigma)
        if not (base and top):
            return (
                f"Detectability at σ_DP·√D = {level:g}: not measured (no DP or global did not run)."
            )
        gap = tables.mean_cer(top) - tables.mean_cer(base)
        verdict = "met" if gap >= 5 else "NOT met: raise the high level"
        return (
            f"Detectability: at σ_DP·√D = {level:g} (σ_DP = {sigma:.4g}) global clipping "
            f"loses {gap:.1f} CER points against no DP (condition ≥ 5: {verdict})."
        )

    def grid(self, results: list[dict]) -> str:
        """Rows = methods, columns = no noise (no DP's) and the levels: CER and WER."""
        headers = ["method", "σ_DP = 0", *(f"σ_DP·√D = {v:g}" for v in self.preset.levels)]
        rows = []
        for method in self.preset.methods:
            if method == "no DP":
                runs = [self._runs(results, method, 0.0)] + [None] * len(self.sigmas)
            else:
                runs = [None] + [self._runs(results, method, sigma) for sigma in self.sigmas]
            rows.append(
                [method]
                + ["" if r is None else tables.errors_cell(r, with_count=True) for r in runs]
            )
        return markdown_table(headers, rows)

    def snr_grid(self, results: list[dict]) -> str:
        headers = ["method"] + [f"σ_DP·√D = {level:g}" for level in self.preset.levels]
        rows = []
        for method in self.preset.methods:
            if method == "no DP":
                continue
            row = [method]
            for sigma in self.sigmas:
                runs = self._runs(results, method, sigma, seed=0)
                row.append(tables.snr_range(runs[0]) if runs else "–")
            rows.append(row)
        return markdown_table(headers, rows)

    def signal_noise(self, results: list[dict]) -> list[str]:
        """The per-module table of the key methods at the highest level (seed 0), folded."""
        runs = {m: self._runs(results, m, self.sigmas[-1], seed=0) for m in design.KEY_METHODS}
        if not all(runs.values()):
            return []
        table = tables.signal_noise_table({m: tables.read_metrics(r[0]) for m, r in runs.items()})
        return [
            f"<details><summary>Per module at σ_DP·√D = {self.preset.levels[-1]:g}: "
            "‖Δ_h‖, signal, noise, S/N</summary>",
            "",
            table,
            "</details>",
            "",
        ]


def _seed_line(results: list[dict]) -> str:
    if not results:
        return "The seed model on the held-out users: not evaluated yet (no cell finished)."
    return (
        f"The seed model on the held-out users (before FL): CER "
        f"{100 * results[0]['seed_cer']:.1f} %, WER {100 * results[0]['seed_wer']:.1f} %."
    )


def _device() -> str:
    import jax

    device = jax.devices()[0]
    return f"{jax.device_count()} × {device.device_kind} (jax {jax.__version__})"
