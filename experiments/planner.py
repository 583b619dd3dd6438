"""The round step of a trainer config compiled for a target's devices, at any chunk: its
memory per chip and loop-aware costs (:class:`Planner`, :class:`Compiled`), and the search for
the largest chunk that fits (:func:`largest_chunk`). ``fl-dp-asr-plan`` (:mod:`experiments.plan`)
reports it; the trainer's ``fl.chunk_size=None`` uses the search on its own devices."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import pathlib
import re
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments import fl_round_step, fl_setup
from fl_dp_asr.aot import abstract, hlo, targets
from fl_dp_asr.data import federated
from fl_dp_asr.fl import round as round_lib
from fl_dp_asr.models import asr
from fl_dp_asr.train import utils

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class RoundShape:
    """The cohort block a round of the config packs (every slot a real client).

    Attributes:
        num_slots: client slots (real and padding) of the round.
        local_steps, batch_size: L and B of the block.
        seconds: padded utterance length (s): the corpus's bucket.
        max_label_len: padded label length (tokens).
    """

    num_slots: int
    local_steps: int
    batch_size: int
    seconds: float
    max_label_len: int

    @property
    def max_samples(self) -> int:
        return round(self.seconds * federated.SAMPLE_RATE)


@dataclasses.dataclass(frozen=True)
class Compiled:
    """One compiled round step: its chunk, memory per chip, costs and compile time."""

    chunk: int
    memory: Any  # compiled.memory_analysis()
    cost: hlo.HloCost
    compile_s: float
    hlo_chars: int
    num_slots: int = 0  # client slots of the round (real and padding)
    refused: str = ""  # the compiler's out-of-memory message (then memory is None)
    required_bytes: int = 0  # what that message says the temporaries need

    @property
    def peak_bytes(self) -> int:
        """What the program holds on a chip at its peak: arguments + temporaries + outputs
        not aliased to arguments + code (a program the compiler refused: what it said the
        temporaries need)."""
        m = self.memory
        if m is None:
            return self.required_bytes
        return (
            m.argument_size_in_bytes
            + m.temp_size_in_bytes
            + m.output_size_in_bytes
            - m.alias_size_in_bytes
            + m.generated_code_size_in_bytes
        )


@dataclasses.dataclass(frozen=True)
class Planner:
    """Compiles the config's round step for a target at any chunk size."""

    config: ml_collections.ConfigDict
    target: targets.Target
    devices: list
    seconds: float
    population: int
    max_label_len: int | None = None  # None: label_length(seconds)
    hlo_dir: str | None = None  # also write each program's optimized HLO there

    def compile(self, chunk: int) -> Compiled:
        """The round step with ``chunk`` clients vectorized per chip (sharded over every
        device when there are several), compiled."""
        config = _with(self.config, fl={"chunk_size": chunk, "executor": "auto"})
        model_config = utils.model_config_from(config.model)
        dp = fl_setup.dp_config(config)
        canaries = fl_setup.make_canaries(config)
        sampler = fl_setup.make_sampler(config, self.population)
        parts = fl_round_step.make_round_step(
            config, model_config, dp, sampler.expected_size, canaries, self.devices
        )
        mesh = parts.executor.mesh
        params = jax.eval_shape(
            lambda: asr.stack_blocks(asr.init_params(model_config, jax.random.key(0)))
        )
        state = jax.eval_shape(
            lambda p: round_lib.init_server_state(p, parts.server_optimizer, dp, asr.PARAM_LAYOUT),
            params,
        )
        shape = self.round_shape(sampler.num_slots(parts.executor.client_multiple))
        block = abstract.cohort_block(
            shape.num_slots,
            shape.local_steps,
            shape.batch_size,
            shape.max_samples,
            shape.max_label_len,
            mesh,
        )
        if canaries is not None:
            block[round_lib.CANARY_MASK] = jax.ShapeDtypeStruct(
                (canaries.inserted,), np.float32, sharding=abstract.replicated(mesh)
            )
        start = time.perf_counter()
        if mesh is not None:  # replicated, or split over the chips (fl.shard_server_state)
            shardings = round_lib.server_state_shardings(state, mesh, config.fl.shard_server_state)
            state = jax.tree.map(
                lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                state,
                shardings,
            )
        lowered = parts.round_step.lower(state, block, abstract.key(mesh))
        # A compile-only target's program cannot be read back from JAX's cache: skip it.
        with _no_compilation_cache() if self.target.topology else contextlib.nullcontext():
            try:
                compiled = lowered.compile()
            except Exception as error:  # XlaRuntimeError; the compiler's own HBM check
                if "RESOURCE_EXHAUSTED" not in str(error):
                    raise
                return refused(chunk, str(error), time.perf_counter() - start, shape.num_slots)
        seconds = time.perf_counter() - start
        text, memory = compiled.as_text(), compiled.memory_analysis()
        if self.hlo_dir:
            pathlib.Path(self.hlo_dir).mkdir(parents=True, exist_ok=True)
            (pathlib.Path(self.hlo_dir) / f"chunk{chunk}.hlo.txt").write_text(text)
            (pathlib.Path(self.hlo_dir) / f"chunk{chunk}.memory.txt").write_text(
                f"{memory}\nslots {shape.num_slots}\ncompile_s {seconds}\n"
            )
        return Compiled(
            chunk,
            memory,
            hlo.analyze(text),
            seconds,
            len(text),
            shape.num_slots,
        )

    def round_shape(self, num_slots: int) -> RoundShape:
        fl = self.config.fl
        return RoundShape(
            num_slots,
            fl.local_steps,
            fl.local_batch_size,
            self.seconds,
            self.max_label_len or label_length(self.seconds),
        )


@contextlib.contextmanager
def _no_compilation_cache():
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)


def label_length(seconds: float) -> int:
    """Padded label length of a ``seconds``-long utterance: 16 characters per second (fast
    speech), rounded up to 8 tokens."""
    return int(math.ceil(seconds * 16 / 8) * 8)


def _with(
    config: ml_collections.ConfigDict, **sections: dict[str, Any]
) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy
    for section, values in sections.items():
        for name, value in values.items():
            config[section][name] = value
    return config


def fits(compiled: Compiled, chip: targets.Chip) -> bool:
    return not compiled.refused and compiled.peak_bytes <= chip.hbm_bytes


def refused(chunk: int, message: str, seconds: float, num_slots: int) -> Compiled:
    """A program the compiler refused for the chip's memory (``RESOURCE_EXHAUSTED``, e.g.
    TPU's "the total memory required for HLO temporaries (36.66G) exceeds available HBM")."""
    found = re.search(r"\(([\d.]+)([GM])\) exceeds", message) or re.search(
        r"([\d.]+)([GM])i?B?\b", message
    )
    scale = GIB if found and found.group(2) == "G" else 2**20
    required = int(float(found.group(1)) * scale) if found else 0
    first = message.strip().splitlines()[0][:300]
    return Compiled(
        chunk,
        None,
        hlo.HloCost(0.0, 0.0, (), (), ()),
        seconds,
        0,
        num_slots,
        refused=first,
        required_bytes=required,
    )


def largest_chunk(
    planner: Planner, clients_per_chip: int, log=print
) -> tuple[Compiled | None, list[Compiled]]:
    """The largest power-of-two chunk (≤ the clients per chip) whose round step fits a chip,
    and every program compiled on the way.

    Memory grows about linearly with the chunk: after chunks 1 and 2 the next candidate is
    the largest power of two the line predicts to fit, then it steps down (or up) by halves
    until a fitting one is found, so a search compiles three or four programs.
    """
    chip, tried = planner.target.chip, {}

    def attempt(chunk: int) -> Compiled:
        if chunk not in tried:
            log(f"compiling the round step at chunk {chunk} ...")
            tried[chunk] = planner.compile(chunk)
            log(
                f"  chunk {chunk}: {tried[chunk].peak_bytes / GIB:.2f} GiB per chip, "
                f"compiled in {tried[chunk].compile_s:.0f} s"
            )
        return tried[chunk]

    top = 1 << int(math.log2(max(clients_per_chip, 1)))
    one = attempt(1)
    if not fits(one, chip):
        return None, list(tried.values())
    if top == 1:
        return one, list(tried.values())
    two = attempt(2)
    if not fits(two, chip):
        return one, list(tried.values())
    per_client = max(two.peak_bytes - one.peak_bytes, 1)
    predicted = 1 + (chip.hbm_bytes - one.peak_bytes) // per_client
    chunk = max(2, min(top, 1 << int(math.log2(predicted))))
    while chunk > 2 and not fits(attempt(chunk), chip):
        chunk //= 2
    while chunk * 2 <= min(top, predicted) and fits(attempt(chunk * 2), chip):
        chunk *= 2
    return attempt(chunk), sorted(tried.values(), key=lambda c: c.chunk)


def num_slots_at(planner: Planner, chunk: int) -> int:
    config = _with(planner.config, fl={"chunk_size": chunk})
    sampler = fl_setup.make_sampler(config, planner.population)
    return sampler.num_slots(chunk * planner.target.num_chips)


def clients_per_chip(planner: Planner) -> int:
    """Client slots per chip of a round at chunk 1 (the most a chunk can usefully hold)."""
    return num_slots_at(planner, 1) // planner.target.num_chips


def default_population(config: ml_collections.ConfigDict) -> int:
    """The population whose sampling rate is the config's extrapolated one (S·K'/S'), or
    100 × S without an extrapolation."""
    dp, cohort = config.dp, config.fl.cohort_size
    if dp.target_cohort and dp.target_population:
        return round(cohort * dp.target_population / dp.target_cohort)
    return 100 * cohort


def parameter_shapes(config: ml_collections.ConfigDict) -> list[jax.ShapeDtypeStruct]:
    """The model's parameters (``config.model``), as shapes: nothing is allocated."""
    model_config = utils.model_config_from(config.model)
    return jax.tree.leaves(jax.eval_shape(lambda: asr.init_params(model_config, jax.random.key(0))))


def parameter_bytes(config: ml_collections.ConfigDict) -> int:
    """Bytes of the model's parameters."""
    return sum(x.size * x.dtype.itemsize for x in parameter_shapes(config))
