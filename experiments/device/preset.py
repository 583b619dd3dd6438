"""The device study's presets (:class:`Preset`: the GPU's plan, :data:`DEVICE`, and toy
sizes for any CPU, :data:`DRY_RUN`) and the replication recipes and study they make."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from experiments.configs import central, common, fl_dp
from experiments.replication import cell_run, design
from fl_dp_asr.data import synthetic
from fl_dp_asr.models import asr
from fl_dp_asr.train import utils

# σ_DP·√D, the noise norm on the cohort mean in units of C (D = parameters): the paper's
# σ_DP = 1e-5 at D = 255.8 M (0.16), and the CPU study's σ_DP = 0.1 at the tiny model's
# D = 1.16 M (108), where global clipping lost 5.8 CER points.
PAPER_LEVEL = design.PAPER_NOISE_PER_COORD[0]  # 0.16
HIGH_LEVEL = 108.0
DEVICE_METHODS = ("no DP", "global", "per-layer by dim", "per-layer uniform", "rescale per-layer")
# The FL comparison's domain: few utterances per user (Common Voice-like), 200 users; the
# seed's: 500 LibriSpeech-part utterances. Sized so that corpus + wheels + tree ≤ 64 MiB
# (FLAC of the noisy LibriSpeech part costs ~59 KB per utterance, 32 kHz MP3 ~16 KB).
DEVICE_CORPUS = synthetic.CorpusConfig(
    librispeech=(
        synthetic.SplitSpec("train-clean-100", 25, 500),
        synthetic.SplitSpec("dev-clean", 6, 40),
        synthetic.SplitSpec("test-clean", 1, 2),
    ),
    common_voice=(
        synthetic.SplitSpec("train", 200, 600),
        synthetic.SplitSpec("dev", 20, 80),
        synthetic.SplitSpec("test", 2, 8),
    ),
    cv_sample_rate=32_000,
)


@dataclasses.dataclass(frozen=True)
class Preset:
    """What one call runs: the device's plan, or toy sizes (:data:`DRY_RUN`).

    Attributes:
        corpus: the synthetic corpus (both layouts).
        model_size, model: the named size and its overrides (``ModelConfig`` fields).
        seed_steps, seed_batch, seed_learning_rate: the seed's central training (Adam, the
            demo's warm-up and cosine decay); seed_minutes: its wall-clock cap (minutes).
        rounds, cohort, chunk, local_steps, local_batch: every cell's FL run (Poisson
            cohorts of expected size ``cohort``; ``chunk`` clients per vmap).
        levels: noise levels as σ_DP·√D (σ_DP = level / √D).
        methods: rows of ``experiments.replication.design.METHODS``; seeds: runs per
            (method, level).
        first_cell_s: the time a worker's first cell is assumed to take (spawn, compile,
            rounds, evaluations), seconds, before one has been measured.
        workers: processes running cells (1: this one); each takes whole methods.
    """

    corpus: synthetic.CorpusConfig = DEVICE_CORPUS
    model_size: str = "small"
    model: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"num_blocks": 36, "dtype": "bfloat16"}
    )
    seed_steps: int = 2000
    seed_batch: int = 32
    seed_learning_rate: float = 1e-3
    seed_minutes: float = 2.5
    rounds: int = 20
    cohort: int = 32
    chunk: int = 8
    local_steps: int = 3
    local_batch: int = 4
    levels: tuple[float, ...] = (PAPER_LEVEL, HIGH_LEVEL)
    methods: tuple[str, ...] = DEVICE_METHODS
    seeds: int = 2
    first_cell_s: float = 90.0
    workers: int = len(DEVICE_METHODS)

    @property
    def depth(self) -> int:
        return self.model["num_blocks"]


DEVICE = Preset()
# Toy size on a CPU (the test suite runs it): the tiny corpus and model, 2 seed steps, no DP
# and global clipping at both levels, 2 rounds. Its seed and cells are configured like those
# of tests/experiments/test_replicate.py's quick study (apart from δ and S'/K', which no
# compiled program holds), so that the test session's compilation cache serves both.
DRY_RUN = Preset(
    corpus=synthetic.tiny_config(),
    model_size="tiny",
    model={"num_blocks": 4, "dtype": "float32"},
    seed_steps=2,
    seed_batch=2,
    seed_learning_rate=2e-3,
    seed_minutes=1.0,
    rounds=2,
    cohort=2,
    chunk=2,
    local_steps=2,
    local_batch=2,
    methods=("no DP", "global"),
    seeds=1,
    first_cell_s=5.0,
    workers=1,
)


def _data(section: ml_collections.ConfigDict, corpus: str, data_dir: str) -> None:
    """Points a ``data`` section at ``corpus`` (never generated there: ``--prepare`` does)."""
    section.manual_dir, section.data_dir, section.synthetic_dir = corpus, data_dir, None
    section.num_buckets = 1  # one padded shape: one compilation per program


def central_config(preset: Preset, corpus: str, data_dir: str) -> ml_collections.ConfigDict:
    """The central demo recipe with the preset's model, batch, learning rate and steps."""
    c = central.get_config("demo")
    _data(c.data, corpus, data_dir)
    c.data.min_seconds = 0.0
    c.model = common.model(preset.model_size)
    for name, value in preset.model.items():
        c.model[name] = value
    c.optimizer.learning_rate = preset.seed_learning_rate
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, max(1, preset.seed_steps // 10))
    c.train.batch_size = preset.seed_batch
    c.train.num_steps = preset.seed_steps
    c.train.max_minutes = preset.seed_minutes
    c.train.log_every = max(1, preset.seed_steps // 10)
    c.eval.every = c.checkpoint.every = preset.seed_steps
    return c


def fl_config(preset: Preset, corpus: str, data_dir: str) -> ml_collections.ConfigDict:
    """The FL demo recipe on the preset's corpus, cohort and local work, one compiled local
    step (no padding cuts), RDP ε of the paper's extrapolated cohort S' = 204,800 at the
    simulated q (δ = 1e-9, the paper's)."""
    c = fl_dp.get_config("demo")
    _data(c.data, corpus, data_dir)
    c.fl.cohort_size = preset.cohort
    c.fl.chunk_size = preset.chunk
    c.fl.local_steps = preset.local_steps
    c.fl.local_batch_size = preset.local_batch
    c.fl.cut_row_levels = c.fl.cut_length_levels = 1
    population = preset.corpus.common_voice[0].speakers
    c.dp.delta = 1e-9
    c.dp.target_cohort = 204_800
    c.dp.target_population = round(204_800 * population / preset.cohort)
    c.dp.target_pld = False  # PLD at small z' takes minutes; RDP is reported
    return c


def recipes(preset: Preset, corpus: str, data_dir: str) -> cell_run.Recipes:
    return cell_run.Recipes(
        functools.partial(central_config, preset, corpus, data_dir),
        functools.partial(fl_config, preset, corpus, data_dir),
    )


def study(preset: Preset, sigmas: Sequence[float]) -> design.Study:
    """The ``design.Study`` whose fields ``run_cell`` and ``seed_checkpoint`` read."""
    return design.Study(
        sigmas=(0.0, *sigmas),
        methods=preset.methods,
        seeds=preset.seeds,
        rounds=preset.rounds,
        cohort=preset.cohort,
        depths=(preset.depth,),
        seed_steps=preset.seed_steps,
    )


def num_params(preset: Preset) -> int:
    """D: the preset model's parameter count (shapes only, nothing allocated)."""
    config = utils.model_config_from(central_config(preset, "", "").model)
    return asr.count_params(asr.abstract_params(config))
