"""fl-dp-asr-plan: the trainer's round step built without devices, compiled for a TPU slice
of several hosts (libtpu's compile-only devices), sized and checked."""

import dataclasses

import jax
import ml_collections
import pytest

from experiments import fl_setup
from experiments import plan as plan_lib
from experiments.configs import fl_dp
from fl_dp_asr.aot import hlo, targets
from fl_dp_asr.train import utils

needs_libtpu = pytest.mark.skipif(
    not targets.tpu_compiler_available(),
    reason="libtpu is not installed (make install puts it in "
    ".tpu-compiler/ where the registry has it)",
)


def tiny_config(**fl) -> ml_collections.ConfigDict:
    """The demo recipe, shrunk to compile in seconds: one block, one local step of one
    1 s utterance, a fixed cohort of 16, no padding cuts."""
    config = fl_dp.get_config("demo")
    config.model.num_blocks = 1
    config.fl.update(
        sampling="fixed",
        cohort_size=16,
        local_steps=1,
        local_batch_size=1,
        cut_row_levels=1,
        cut_length_levels=1,
        **fl,
    )
    config.dp.target_cohort = None
    return config


def test_making_the_round_step_moves_nothing_to_a_device():
    config = tiny_config()
    model_config = utils.model_config_from(config.model)
    with jax.transfer_guard_host_to_device("disallow"):
        parts = fl_setup.make_round_step(
            config, model_config, fl_setup.dp_config(config), 16.0, None
        )
    assert isinstance(parts.round_step.noise_stddev, float)


@pytest.fixture(scope="module")
def compiled_for_slice():
    """The tiny round step compiled at chunk 1 for v5e-16 (16 chips on 4 hosts)."""
    target = targets.target("v5e-16")
    planner = plan_lib.Planner(tiny_config(), target, targets.abstract_devices(target), 1.0, 64)
    return planner, planner.compile(1)


@needs_libtpu
def test_the_round_step_compiles_for_a_multi_host_slice_and_fits(compiled_for_slice):
    planner, compiled = compiled_for_slice
    assert targets.num_hosts(planner.devices) == 4
    assert compiled.peak_bytes < targets.CHIPS["v5e"].hbm_bytes
    assert compiled.cost.flops > 0 and compiled.cost.unknown_loops == ()
    text, problems = plan_lib.report(
        planner, compiled, [compiled], 20, plan_lib.parameter_bytes(planner.config)
    )
    assert problems == []
    assert "| 1 ← |" in text and "| fits |" in text and "4 hosts" in text
    assert "lower bound per round" in text and "MFU upper bound" in text


@needs_libtpu
def test_exactly_one_parameter_sized_all_reduce_per_round(compiled_for_slice):
    planner, compiled = compiled_for_slice
    params_bytes = plan_lib.parameter_bytes(planner.config)
    large = [c for c in compiled.cost.collectives if c.bytes >= params_bytes / 2]
    assert [(c.op, c.per_round, c.loop_depth) for c in large] == [("all-reduce", 1, 0)]


@needs_libtpu
def test_a_parameter_sized_collective_in_a_loop_is_a_problem(compiled_for_slice):
    planner, compiled = compiled_for_slice
    looped = hlo.Collective("all-gather", "ag", 10 * 2**20, 16, 1)
    cost = dataclasses.replace(compiled.cost, collectives=compiled.cost.collectives + (looped,))
    _, problems = plan_lib.report(
        planner,
        dataclasses.replace(compiled, cost=cost),
        [compiled],
        20,
        plan_lib.parameter_bytes(planner.config),
    )
    assert len(problems) == 1 and "inside a loop" in problems[0]


@needs_libtpu
def test_a_program_the_compiler_refuses_for_memory_does_not_fit(compiled_for_slice):
    planner, _ = compiled_for_slice
    message = (
        "RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory on HBM, the "
        "total memory required for HLO temporaries (36.66G) exceeds available HBM "
        "(15.75G)."
    )
    oom = plan_lib.refused(2, message, 3.0, 32)
    assert oom.peak_bytes == int(36.66 * 2**30)
    assert not plan_lib.fits(oom, planner.target.chip)
    text, problems = plan_lib.report(
        planner, oom, [oom], 20, plan_lib.parameter_bytes(planner.config)
    )
    assert "36.66 (compiler)" in text and "does not fit" in text
    assert len(problems) == 1 and "the compiler says RESOURCE_EXHAUSTED" in problems[0]


class FakePlanner:
    """Memory per chip = 1 GiB + 3 GiB per client of the chunk; counts compilations."""

    def __init__(self, hbm_gib: float):
        self.target = targets.Target(
            "fake", targets.Chip("fake", "tpu", int(hbm_gib * 2**30), 1e12, 1e9, "test"), 1, ""
        )
        self.compiled: list[int] = []

    def compile(self, chunk: int) -> plan_lib.Compiled:
        self.compiled.append(chunk)
        memory = type(
            "Memory",
            (),
            dict(
                argument_size_in_bytes=2**30,
                temp_size_in_bytes=3 * chunk * 2**30,
                output_size_in_bytes=0,
                alias_size_in_bytes=0,
                generated_code_size_in_bytes=0,
            ),
        )
        return plan_lib.Compiled(chunk, memory, hlo.HloCost(0, 0, (), (), ()), 0.0, 0, chunk)


@pytest.mark.parametrize(
    "hbm_gib, clients, best, compiled",
    [
        (16, 64, 4, [1, 2, 4]),  # 1 + 3·4 = 13 ≤ 16 < 25
        (100, 8, 8, [1, 2, 8]),  # capped by the clients per chip
        (3, 8, None, [1]),  # not even one client fits
        (5, 8, 1, [1, 2]),
    ],
)
def test_largest_chunk_compiles_few_programs(hbm_gib, clients, best, compiled):
    planner = FakePlanner(hbm_gib)
    found, _ = plan_lib.largest_chunk(planner, clients, log=lambda message: None)
    assert (found and found.chunk) == best
    assert planner.compiled == compiled
