"""Benchmark 6: what limits CPU speed, and the paper model's FLOPs (GPU estimates).

1. FLOPs and bytes of one local step (``value_and_grad`` of the CTC loss on one batch) from
   XLA's HLO cost analysis, on abstract shapes (``jax.ShapeDtypeStruct``: nothing is
   allocated, nothing compiled). XLA counts a loop body once, so round FLOPs are computed
   as clients × local steps × step FLOPs (clipping, noise and the server update are
   O(params), negligible next to training).
2. Achieved GFLOP/s of one client (``jit(client_update.run)``, the ``sequential`` executor's
   unit of work) and of a vmapped chunk of 4 clients (the ``vectorized`` unit), next to
   this machine's float32 matmul throughput.
3. A ``jax.profiler`` trace of both, aggregated by kind of XLA:CPU thunk.
4. The same with the model's strided front-end convolution as ``lax.conv_general_dilated``
   (the code before commit 36f7cd5; patched in this process only), whose kernel gradient
   XLA:CPU runs ~100× below matmul speed.
5. The paper model on an H100: FLOPs per round from (1) and the arithmetic of the model
   FLOPs utilization — an **estimate**, no GPU was used.

    python -m benchmarks.analysis [--quick | --full]
"""

from __future__ import annotations

import collections
import contextlib
import re
from unittest import mock

from benchmarks import common

H100_BF16_DENSE_TFLOPS = 989.0  # H100 SXM, dense BF16 tensor-core peak (NVIDIA datasheet)
H100_HBM_TBPS = 3.35  # H100 SXM HBM3 bandwidth
PAPER_COHORTS = (1024, 50_000)  # the paper's simulated and extrapolated cohort sizes


# ------------------------------------------------------------------ HLO cost analysis


def step_cost(size: str, shape: common.ClientShape = common.ClientShape(), **overrides):
    """HLO cost analysis of one local step: ``{"flops", "bytes", "params"}``.

    The blocks run as a ``lax.scan`` whose body XLA counts once, so the step is analysed at
    0 and 1 blocks and the block's cost is multiplied by the depth:
    cost(n) = cost(0) + n · (cost(1) − cost(0)).
    """
    import jax

    from fl_dp_asr.models import asr
    from fl_dp_asr.models.config import get_model_config

    config = get_model_config(size, **overrides)
    batch = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape[2:], s.dtype),
        common.abstract_cohort(1, shape)["batches"],
    )

    def cost(num_blocks):
        shallow = config.replace(num_blocks=num_blocks)
        grad = jax.value_and_grad(asr.make_loss_fn(shallow, train=True), has_aux=True)
        lowered = jax.jit(grad).lower(asr.abstract_params(shallow), batch, jax.random.key(0))
        analysis = lowered.cost_analysis()
        return float(analysis["flops"]), float(analysis["bytes accessed"])

    (flops0, bytes0), (flops1, bytes1) = cost(0), cost(1)
    depth = config.num_blocks
    return {
        "flops": flops0 + depth * (flops1 - flops0),
        "bytes": bytes0 + depth * (bytes1 - bytes0),
        "params": asr.count_params(asr.abstract_params(config)),
    }


# ------------------------------------------------------------------ profiling


def _category(name: str) -> str | None:
    if common.is_runtime_event(name):
        return None  # runtime / Python / loop, not a thunk
    if name.startswith("conv") or "conv_general" in name:
        return "convolution"
    if name.startswith(("ynn_fusion", "dot")) or ".dot" in name:
        return "matmul (dot / YNNPACK fusion)"
    if name.startswith("fft"):
        return "FFT"
    if name.startswith(("copy", "transpose")) or "transpose" in name:
        return "copy / transpose"
    return "elementwise / reduce fusions, other"


def profile(fn, calls: int = 2) -> tuple[dict[str, tuple[float, float]], list[tuple[str, float]]]:
    """Per-category (ms per call, thunks per call) and the top thunks of ``fn()``."""
    per_category = collections.Counter()
    counts = collections.Counter()
    per_name = collections.Counter()
    for event in common.trace_events(fn, calls):
        category = _category(event["name"])
        if category:
            per_category[category] += event["dur"] / 1e3 / calls
            counts[category] += 1 / calls
            per_name[event["name"]] += event["dur"] / 1e3 / calls
    return ({c: (per_category[c], counts[c]) for c in per_category}, per_name.most_common(5))


# ------------------------------------------------------------------ the previous front end


@contextlib.contextmanager
def lax_conv_front_end():
    """Traces the encoder with its front end as ``lax.conv_general_dilated`` again (the code
    before commit 36f7cd5, which computes it as patches @ kernel); same parameters."""
    import jax

    from fl_dp_asr.models import encoder

    jax.clear_caches()  # jit caches traces per function: force a retrace
    try:
        with mock.patch.object(encoder, "strided_conv1d_as_matmul", jax.lax.conv_general_dilated):
            yield
    finally:
        jax.clear_caches()


# ------------------------------------------------------------------ measurements


def matmul_gflops(n: int = 1536, repeats: int = 5) -> float:
    """float32 matmul throughput of this machine (GFLOP/s), the practical compute peak."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    dot = jax.jit(lambda x: x @ x)
    common.block_until_ready(dot(a))
    seconds = common.median(
        [common.time_call(lambda: common.block_until_ready(dot(a))) for _ in range(repeats)]
    )
    return 2 * n**3 / seconds / 1e9


def client_units(size: str, chunk: int, repeats: int):
    """Timed callables: one client's update (sequential unit) and a vmapped chunk."""
    import jax

    _, params, update, _ = common.asr_task(size)
    block = common.synthetic_cohort(chunk)
    block["step_mask"][:] = 1.0  # every step real: the timing is per computed step
    clients = jax.device_put({"batches": block["batches"], "step_mask": block["step_mask"]})
    keys = jax.random.split(jax.random.key(0), chunk)
    one = jax.tree.map(lambda x: x[0], clients)
    single = jax.jit(update.run)
    # The vectorized executor's chunk trainer (vmap over clients, steps inside a scan).
    vmapped = jax.jit(update.run_chunk)
    fns = {
        "one client (sequential unit)": lambda: single(params, one, keys[0]),
        f"vmap of {chunk} clients (vectorized unit)": lambda: vmapped(params, clients, keys),
    }
    for fn in fns.values():
        common.block_until_ready(fn())  # compile
    times = common.interleaved(
        {k: (lambda f=f: common.block_until_ready(f())) for k, f in fns.items()}, repeats
    )
    return fns, {k: common.median(v) for k, v in times.items()}


def run(mode: str = "default") -> common.Report:
    shape = common.ClientShape()
    repeats = 2 if mode == "quick" else 3
    chunk = 4
    report = common.Report(
        "What limits CPU speed; FLOPs of the paper model",
        f"mode={mode}; local step = value_and_grad of the CTC loss on one batch of "
        f"{shape.batch_size} utterances padded to {shape.max_seconds_padded:g} s "
        f"(SpecAugment, dropout, CAPE on); client = {shape.local_steps} local steps.",
    )

    # 1. FLOPs per local step.
    sizes = ("tiny", "small", "paper")
    costs = {s: step_cost(s) for s in sizes}
    rows = []
    for s, c in costs.items():
        client = c["flops"] * shape.local_steps
        rows.append(
            [
                s,
                f"{c['params'] / 1e6:.2f} M",
                c["flops"] / 1e9,
                c["bytes"] / 1e9,
                c["flops"] / c["bytes"],
                client / 1e9,
                64 * client / 1e12,
            ]
        )
    report.add_table(
        "HLO cost analysis of one local step (abstract shapes)",
        [
            "model",
            "params",
            "GFLOP/step",
            "GB accessed/step",
            "FLOP/byte",
            "GFLOP/client",
            "TFLOP/round of 64",
        ],
        rows,
    )

    # 2-4. Achieved throughput and profile, current model vs matmul front end.
    peak = matmul_gflops()
    tiny_client_flops = costs["tiny"]["flops"] * shape.local_steps
    perf_rows, profile_rows, top_rows = [], [], []
    variants = [("current (front end as matmul)", contextlib.nullcontext)]
    if mode != "quick":
        variants.append(("front end as lax.conv (before 36f7cd5)", lax_conv_front_end))
    for variant, ctx in variants:
        common.log(f"  analysis: timing the tiny client update, {variant}")
        with ctx():
            fns, seconds = client_units("tiny", chunk, repeats)
            for unit, s in seconds.items():
                clients = chunk if unit.startswith("vmap") else 1
                per_client = s / clients
                perf_rows.append(
                    [
                        variant,
                        unit,
                        per_client,
                        tiny_client_flops / per_client / 1e9,
                        100 * tiny_client_flops / per_client / 1e9 / peak,
                    ]
                )
                if mode == "quick":
                    continue
                categories, top = profile(fns[unit])
                for category, (ms, count) in sorted(categories.items(), key=lambda kv: -kv[1][0]):
                    profile_rows.append([variant, unit, category, ms / clients, count / clients])
                top_rows += [
                    [variant, unit, re.sub(r"\s+", " ", name), ms / clients] for name, ms in top[:3]
                ]
    report.add_table(
        f"Tiny model, one client = {shape.local_steps} local steps (float32 matmul peak of this "
        f"machine: {peak:.1f} GFLOP/s)",
        ["model code", "unit", "s per client", "GFLOP/s achieved", "% of matmul peak"],
        perf_rows,
    )
    if profile_rows:
        report.add_table(
            "jax.profiler trace by kind of XLA:CPU thunk (per client)",
            ["model code", "unit", "thunk kind", "ms per client", "thunks per client"],
            profile_rows,
        )
        report.add_table(
            "Top thunks (per client)", ["model code", "unit", "thunk", "ms per client"], top_rows
        )

    # 5. Paper model on an H100 (estimate).
    paper = costs["paper"]
    step_flops = paper["flops"]
    gpu_rows = []
    for cohort in PAPER_COHORTS:
        round_flops = cohort * shape.local_steps * step_flops
        for mfu in (1.0, 0.4, 0.2):
            seconds = round_flops / (H100_BF16_DENSE_TFLOPS * 1e12 * mfu)
            gpu_rows.append([cohort, round_flops / 1e15, f"{int(mfu * 100)} %", seconds])
    report.add_table(
        "ESTIMATE (no GPU used): paper model round on one H100 SXM "
        f"({H100_BF16_DENSE_TFLOPS:g} TFLOP/s dense bf16)",
        ["cohort", "PFLOP/round", "assumed MFU", "s/round"],
        gpu_rows,
    )
    roofline_rows = []
    for utterances in (2, 8, 32):
        flops = step_flops * utterances / shape.batch_size
        compute_s = flops / (H100_BF16_DENSE_TFLOPS * 1e12)
        for bytes_per_param in (12, 20):
            memory_s = paper["params"] * bytes_per_param / (H100_HBM_TBPS * 1e12)
            roofline_rows.append(
                [
                    utterances,
                    utterances * 133,
                    flops / 1e9,
                    bytes_per_param,
                    compute_s * 1e3,
                    memory_s * 1e3,
                    f"{100 * compute_s / max(compute_s, memory_s):.0f} %",
                ]
            )
    report.add_table(
        "ESTIMATE (no GPU used): roofline of one paper-model local step on an H100 — each "
        "client streams its own weights and gradients every step (12–20 bytes/parameter: "
        "f32 params read + written, f32 grads written + read, bf16 copies)",
        [
            "utterances/step (4 s)",
            "GEMM rows",
            "GFLOP",
            "bytes/param",
            "compute ms",
            "HBM ms",
            "MFU ceiling",
        ],
        roofline_rows,
    )
    step_bytes_s = paper["bytes"] / (H100_HBM_TBPS * 1e12)
    step_flops_s = step_flops / (H100_BF16_DENSE_TFLOPS * 1e12)
    report.notes += [
        f"Paper model local step (2 utterances × 4 s): {step_flops / 1e9:.0f} GFLOP by HLO cost "
        f"analysis (≈ 6 × {paper['params'] / 1e6:.0f} M params × 266 frames = "
        f"{6 * paper['params'] * 266 / 1e9:.0f} GFLOP, plus attention) → "
        f"{step_flops_s * 1e3:.2f} ms at peak compute (ESTIMATE). XLA's unfused byte count "
        f"({paper['bytes'] / 1e9:.1f} GB, {step_bytes_s * 1e3:.1f} ms at peak HBM) is an upper "
        "bound; the roofline table uses the weight/gradient traffic instead.",
        "vmapping a chunk of clients does not raise arithmetic intensity: after its first local "
        "step every client has its own weights, so each client's GEMMs stream its own weights "
        "and gradients. Only more frames per local step (a larger local batch) does; chunks "
        "are still needed on a GPU to give it enough independent GEMMs to fill its SMs. "
        "MFU = model FLOPs/s ÷ peak (ESTIMATE).",
    ]
    return report


def main(argv=None) -> None:
    common.standard_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
