"""Shared pieces of the benchmarks: synthetic cohorts, round steps, timing, report tables.

Synthetic cohort blocks follow docs/CONTRACTS.md and mimic Common Voice clients: each
client holds 1–20 utterances of 1–4 s (int16 audio at 16 kHz, random noise; the model
cost does not depend on the content), cut into local batches of ``batch_size`` utterances,
so it takes ``min(local_steps, ⌈utterances / batch_size⌉)`` real steps (1–10 with the
defaults). Labels are ~12 characters per second of audio.

Timings on a shared 2-core machine are noisy: every benchmark measures the variants it
compares side by side in one process, interleaved, and reports medians.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import pathlib
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
REPO = pathlib.Path(__file__).resolve().parent.parent
REPORT = REPO / "docs" / "benchmarks.md"


CACHE_ENV = "FL_DP_ASR_BENCH_CACHE"


def setup(cache: bool = True) -> None:
    """Process-wide settings: a persistent XLA compilation cache (compile time is excluded
    from every timing except benchmarks.compile, which turns it off) under
    ``$FL_DP_ASR_BENCH_CACHE`` (default: the trainers', ``~/.cache/fl_dp_asr/xla``; ``off``
    disables it; :func:`fl_dp_asr.train.cli.use_compilation_cache`)."""
    from fl_dp_asr.train import cli

    if cache:
        cli.use_compilation_cache(env=CACHE_ENV)


# ------------------------------------------------------------------ synthetic cohorts


@dataclasses.dataclass(frozen=True)
class ClientShape:
    """Common Voice-like client sizes (the defaults) and the padded block shape.

    Attributes:
        min_utterances, max_utterances: utterances per client, uniform.
        min_seconds, max_seconds: utterance duration, uniform (s).
        batch_size: B, utterances per local step.
        local_steps: L, padded number of local steps.
        max_seconds_padded: padded audio length of the block (s), ≥ ``max_seconds``.
        chars_per_second: label length per second of audio.
        max_label_len: padded label length (tokens).
    """

    min_utterances: int = 1
    max_utterances: int = 20
    min_seconds: float = 1.0
    max_seconds: float = 4.0
    batch_size: int = 2
    local_steps: int = 10
    max_seconds_padded: float = 4.0
    chars_per_second: float = 12.0
    max_label_len: int = 64

    @property
    def max_samples(self) -> int:
        return int(self.max_seconds_padded * SAMPLE_RATE)


def synthetic_cohort(
    num_clients: int, shape: ClientShape = ClientShape(), seed: int = 0, vocab_size: int = 30
) -> dict[str, Any]:
    """A random cohort block ``[clients, local_steps, batch, ...]`` (docs/CONTRACTS.md)."""
    rng = np.random.default_rng(seed)
    c, L, B, S, N = (
        num_clients,
        shape.local_steps,
        shape.batch_size,
        shape.max_samples,
        shape.max_label_len,
    )
    utterances = rng.integers(shape.min_utterances, shape.max_utterances + 1, num_clients)
    steps = np.minimum(L, -(-utterances // B))
    mask = np.zeros((c, L, B), np.float32)
    for i in range(c):
        # Cycle through the client's utterances: the first min(n, B·steps) slots are real.
        real = min(int(utterances[i]), B * int(steps[i]))
        mask[i].reshape(-1)[:real] = 1.0
    seconds = rng.uniform(shape.min_seconds, shape.max_seconds, (c, L, B))
    audio_lengths = (np.minimum(seconds * SAMPLE_RATE, S) * mask).astype(np.int32)
    audio = rng.integers(-3000, 3000, (c, L, B, S), dtype=np.int16)
    audio *= np.arange(S) < audio_lengths[..., None]
    label_lengths = np.clip((seconds * shape.chars_per_second).astype(np.int32), 1, N)
    label_lengths = (label_lengths * mask).astype(np.int32)
    labels = rng.integers(1, vocab_size, (c, L, B, N), dtype=np.int32)
    labels *= np.arange(N) < label_lengths[..., None]
    step_mask = (np.arange(L)[None] < steps[:, None]).astype(np.float32)
    return {
        "batches": {
            "audio": audio,
            "audio_lengths": audio_lengths,
            "labels": labels,
            "label_lengths": label_lengths,
            "mask": mask,
        },
        "step_mask": step_mask,
        "client_mask": np.ones(c, np.float32),
    }


def abstract_cohort(num_clients: int, shape: ClientShape = ClientShape()) -> dict[str, Any]:
    """``jax.ShapeDtypeStruct`` twin of :func:`synthetic_cohort` (nothing allocated)."""
    import jax

    c, L, B = num_clients, shape.local_steps, shape.batch_size
    sds = jax.ShapeDtypeStruct
    return {
        "batches": {
            "audio": sds((c, L, B, shape.max_samples), np.int16),
            "audio_lengths": sds((c, L, B), np.int32),
            "labels": sds((c, L, B, shape.max_label_len), np.int32),
            "label_lengths": sds((c, L, B), np.int32),
            "mask": sds((c, L, B), np.float32),
        },
        "step_mask": sds((c, L), np.float32),
        "client_mask": sds((c,), np.float32),
    }


# ------------------------------------------------------------------ round steps


@functools.cache
def asr_task(size: str, padding_cuts: tuple[int, int] = (3, 2), **model_overrides):
    """``(config, params, client_update, server_optimizer)`` for a named model size, the
    parameters in the round's layout (blocks stacked, ``asr.PARAM_LAYOUT``); local
    steps run on the smallest cut of their batch (``PaddingBuckets(*padding_cuts)``: row
    and length levels; ``(1, 1)``: no cuts), as in the trainer.

    ``model_overrides`` go to :func:`~fl_dp_asr.models.config.get_model_config` (e.g.
    ``remat=True``)."""
    import jax

    from fl_dp_asr.data import PaddingBuckets
    from fl_dp_asr.fl import client, server
    from fl_dp_asr.models import asr
    from fl_dp_asr.models.config import get_model_config

    config = get_model_config(size, **model_overrides)
    params = asr.stack_blocks(asr.init_params(config, jax.random.key(0)))
    update = client.make_client_update(
        asr.make_loss_fn(config, train=True),
        client.local_sgd(0.2, 1.0),
        PaddingBuckets(*padding_cuts),
    )
    return (
        config,
        params,
        update,
        server.make_server_optimizer("lamb", 2e-3, layout=asr.PARAM_LAYOUT),
    )


def make_asr_step(
    size: str,
    cohort_size: int,
    *,
    executor: str = "vectorized",
    chunk_size: int = 16,
    mesh=None,
    noise_multiplier: float = 1.0,
    **model_overrides,
):
    """The paper's round step (per-layer clipping, noise, LAMB) for an ASR model size."""
    from fl_dp_asr.dp import DPConfig
    from fl_dp_asr.fl import executors
    from fl_dp_asr.fl import round as round_lib
    from fl_dp_asr.models import asr

    _, params, update, opt = asr_task(size, **model_overrides)
    dp = DPConfig("per_layer", 1.0, "uniform", noise_multiplier=noise_multiplier)
    step = round_lib.make_round_step(
        update,
        opt,
        dp,
        cohort_size,
        executors.make(executor, chunk_size=chunk_size, mesh=mesh),
        asr.PARAM_LAYOUT,
    )
    return step, params, opt


def fresh_state(params, opt):
    """A new server state with its own buffers (round steps donate the state)."""
    import jax

    from fl_dp_asr.fl import round as round_lib

    return round_lib.init_server_state(jax.tree.map(lambda x: x.copy(), params), opt)


def block_until_ready(tree):
    import jax

    return jax.block_until_ready(tree)


# ------------------------------------------------------------------ timing


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def time_call(fn: Callable[[], Any]) -> float:
    """Wall seconds of ``fn()`` (which must block until its result is ready)."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Times each ``fn`` ``repeats`` times, round-robin, so load changes hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_call(fn))
    return times


def trace_events(fn: Callable[[], Any], calls: int) -> list[dict[str, Any]]:
    """The complete events (``"ph": "X"``, durations in µs) of a ``jax.profiler`` trace of
    ``calls`` calls of ``fn`` (each blocks until its result is ready); each event also gets
    ``"process"``, the name of the trace process it ran in (e.g. ``/device:GPU:0``)."""
    import glob
    import gzip
    import json
    import tempfile

    import jax

    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(calls):
            block_until_ready(fn())
        jax.profiler.stop_trace()
        path = sorted(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True))[-1]
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    processes = {
        e.get("pid"): e.get("args", {}).get("name", "")
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    return [{**e, "process": processes.get(e.get("pid"), "")} for e in events if e.get("ph") == "X"]


def is_runtime_event(name: str) -> bool:
    """Host trace events of the runtime or Python (not an XLA:CPU thunk), and loop thunks
    (which contain their body's ops)."""
    return "::" in name or name.startswith(("$", "end:", "Pjit", "backend_compile", "while"))


def trace_op_times(
    fn: Callable[[], Any], calls: int
) -> tuple[list[tuple[str, tuple[float, float]]], float]:
    """Ops of ``calls`` traced calls of ``fn`` by time: ``([(name, (ms per call, calls per
    call))] longest first, total op ms per call)``. On an accelerator the ops are the
    kernels of its device streams; on a CPU, the XLA thunks."""
    import collections

    events = trace_events(fn, calls)
    device = [e for e in events if "/device:" in e["process"] and "CPU" not in e["process"]]
    ops = device or [e for e in events if not is_runtime_event(e["name"])]
    ms, count = collections.Counter(), collections.Counter()
    for event in ops:
        ms[event["name"]] += event["dur"] / 1e3 / calls
        count[event["name"]] += 1 / calls
    return [(name, (t, count[name])) for name, t in ms.most_common()], sum(ms.values())


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ reports


def machine_info() -> dict[str, str]:
    """CPU model and cores, jax devices, library versions, date."""
    import flax
    import jax
    import jaxlib
    import optax

    cpu = platform.processor() or platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    devices = jax.devices()
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "device": f"{len(devices)} × {devices[0].device_kind} ({devices[0].platform})",
        "versions": (
            f"python {platform.python_version()}, jax {jax.__version__}, "
            f"jaxlib {jaxlib.__version__}, flax {flax.__version__}, "
            f"optax {optax.__version__}"
        ),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclasses.dataclass
class Report:
    """One benchmark's result: a title, a settings line, tables and notes."""

    title: str
    settings: str
    tables: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    def add_table(self, caption: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]):
        self.tables.append((caption, markdown_table(headers, rows)))

    def markdown(self, info: dict[str, str] | None = None) -> str:
        info = info or machine_info()
        parts = [
            f"### {self.title}",
            "",
            f"*{info['date']}* — machine: {info['machine']}; device: {info['device']}; "
            f"{info['versions']}"
            + (f"; XLA_FLAGS={info['xla_flags']}" if info["xla_flags"] else ""),
            "",
            f"Settings: {self.settings}",
            "",
        ]
        for caption, table in self.tables:
            if caption:
                parts += [caption, ""]
            parts += [table, ""]
        parts += [f"- {note}" for note in self.notes]
        return "\n".join(parts).rstrip() + "\n"


def publish(report: Report, path: pathlib.Path | None = REPORT) -> str:
    """Prints ``report`` and appends it to docs/benchmarks.md (``path=None``: print only)."""
    text = report.markdown()
    print("\n" + text, flush=True)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with open(path, "a", encoding="utf-8") as f:
            if new:
                f.write(
                    "# Benchmark results\n\nAppended by `make bench` "
                    "(`python -m benchmarks.run`); newest last. See "
                    "docs/performance.md for the analysis.\n\n"
                )
            f.write("\n" + text)
    return text


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def standard_main(run, doc: str, argv=None, *, jax_setup: bool = True, **setup_kwargs) -> None:
    """Command line of a benchmark module: ``--quick`` / ``--full`` grid, ``--no-write``.

    ``jax_setup=False`` skips :func:`setup` (benchmarks that do not run JAX); other keyword
    arguments go to it.
    """
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_const", const="quick", dest="mode")
    parser.add_argument("--full", action="store_const", const="full", dest="mode")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if jax_setup:
        setup(**setup_kwargs)
    publish(run(args.mode or "default"), None if args.no_write else REPORT)
