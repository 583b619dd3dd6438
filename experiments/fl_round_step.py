"""The trainer's round step for a config (:func:`make_round_step`): the executor over the
devices it sees (``fl.executor = "auto"``), and the chunk that fits their memory
(``fl.chunk_size = None``, :func:`automatic_chunk`). Touches no device until called, so
``fl-dp-asr-plan`` builds the same step for compile-only devices."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import ml_collections
import optax
from absl import logging as absl_logging

from fl_dp_asr.data import PaddingBuckets
from fl_dp_asr.data.layouts import SAMPLE_RATE
from fl_dp_asr.dp import DPConfig
from fl_dp_asr.dp.canaries import Canaries
from fl_dp_asr.fl import client, distributed, executors
from fl_dp_asr.fl import round as round_lib
from fl_dp_asr.models import asr
from fl_dp_asr.models.config import ModelConfig
from fl_dp_asr.train import utils

Log = Callable[[str], None]


def executor_name(config: ml_collections.ConfigDict, num_devices: int) -> str:
    """``config.fl.executor`` with ``"auto"`` resolved for ``num_devices`` devices: ``sharded``
    over all of them when there are several, else ``vectorized``. An explicit executor that
    trains on one device of several is kept, with a warning naming the flag."""
    name = config.fl.executor
    if name == "auto":
        return "sharded" if num_devices > 1 else "vectorized"
    if name != "sharded" and num_devices > 1:
        absl_logging.warning(
            "config.fl.executor=%r trains on 1 of the %d devices: set "
            "--config.fl.executor=auto (or sharded) to use all of them.",
            name,
            num_devices,
        )
    return name


class RoundStepParts(NamedTuple):
    """The trainer's round step and what it is made of."""

    round_step: round_lib.BoundRoundStep
    executor: executors.Executor
    server_optimizer: optax.GradientTransformation


def make_round_step(
    config: ml_collections.ConfigDict,
    model_config: ModelConfig,
    dp: DPConfig,
    expected_cohort_size: float,
    canaries: Canaries | None,
    devices: list | None = None,
) -> RoundStepParts:
    """The round step of ``config`` (``fl``: local training, executor, chunk; ``server``;
    ``dp``), exactly as :func:`train` runs it. Touches no device: ``devices`` (default: every
    device of every process) may be compile-only ones (``fl-dp-asr-plan``,
    :mod:`fl_dp_asr.aot`)."""
    server_optimizer = utils.server_optimizer_from_config(config.server)
    client_update = client.make_client_update(
        asr.make_loss_fn(model_config, train=True),
        client.local_sgd(config.fl.local_learning_rate, config.fl.local_grad_clip_norm),
        PaddingBuckets(config.fl.cut_row_levels, config.fl.cut_length_levels),
    )
    name = executor_name(config, len(jax.devices()) if devices is None else len(devices))
    mesh = distributed.client_mesh(devices) if name == "sharded" else None
    executor = executors.make(name, chunk_size=config.fl.chunk_size, mesh=mesh)
    round_step = round_lib.make_round_step(
        client_update,
        server_optimizer,
        dp,
        expected_cohort_size,
        executor,
        asr.PARAM_LAYOUT,
        canaries,
        config.fl.shard_server_state,
    )
    return RoundStepParts(round_step, executor, server_optimizer)


CPU_CHUNK = 16  # config.fl.chunk_size=None on a device without a memory limit (a CPU)


def automatic_chunk(
    config: ml_collections.ConfigDict, data: utils.Data, log: Log, memory_limit: int | None = None
) -> int:
    """``config.fl.chunk_size=None``: a power-of-two chunk whose round step fits each device,
    found by compiling it for the longest bucket of the data (``fl-dp-asr-plan``'s search,
    :func:`experiments.planner.largest_chunk`): of the chunks that fit, the one with the
    least compiled work (:func:`least_work`).

    ``memory_limit``: bytes per device (default: the device's ``bytes_limit``; a device
    that reports none, a CPU, gets :data:`CPU_CHUNK`).

    Raises:
        RuntimeError: not even one client per device fits, with the memory it needs.
    """
    from experiments import planner as planning  # it builds round steps with this module
    from fl_dp_asr.aot import targets

    devices = jax.devices()
    stats = devices[0].memory_stats() or {}
    memory_limit = memory_limit or stats.get("bytes_limit")
    if not memory_limit:
        log(
            f"config.fl.chunk_size=None: {devices[0].device_kind} reports no memory limit; "
            f"chunk {CPU_CHUNK}."
        )
        return CPU_CHUNK
    kind = devices[0].device_kind
    chip = targets.Chip(
        kind,
        devices[0].platform,
        int(memory_limit),
        float("nan"),
        float("nan"),
        "the device's memory_stats()",
    )
    search = planning.Planner(
        config,
        targets.Target(kind, chip, len(devices), ""),
        devices,
        data.buckets.max_samples[-1] / SAMPLE_RATE,
        data.train.num_users,
        data.buckets.max_label_len[-1],
    )
    best, tried = planning.largest_chunk(search, planning.clients_per_chip(search), log)
    if best is None:
        raise RuntimeError(
            f"config.fl.chunk_size=None: the round step does not fit a {kind} even with one "
            f"client per device ({tried[0].peak_bytes / 2**30:.2f} GiB of "
            f"{memory_limit / 2**30:.2f} GiB): use more devices, --config.model.remat=True, "
            "smaller local batches (fl.local_batch_size) or --config.fl.shard_server_state."
        )
    chosen = least_work(best, tried, chip)
    padding = (
        ""
        if chosen is best
        else f"; chunk {best.chunk} also fits but pads the round to {best.num_slots} slots "
        f"({best.cost.flops / chosen.cost.flops:.2f}x the compiled FLOPs)"
    )
    log(
        f"config.fl.chunk_size=None: chunk {chosen.chunk} ({chosen.peak_bytes / 2**30:.2f} GiB "
        f"of {memory_limit / 2**30:.2f} GiB per {kind}{padding})."
    )
    return chosen.chunk


def least_work(best, tried, chip):
    """Of the compiled chunks that fit ``chip``, the one with the fewest compiled FLOPs per
    round (a larger chunk can pad the round with more client slots: the slots are a multiple
    of chunk × devices), the largest among those within 1 % of it; ``best`` (the largest that
    fits) when no FLOPs were counted."""
    from experiments import planner as planning

    fitting = [c for c in tried if planning.fits(c, chip) and c.cost.flops > 0]
    if not fitting:
        return best
    least = min(c.cost.flops for c in fitting)
    return max((c for c in fitting if c.cost.flops <= 1.01 * least), key=lambda c: c.chunk)
