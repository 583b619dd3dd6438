"""fl-dp-asr-plan: the trainer's round step built without devices, compiled for a TPU slice
of several hosts (libtpu's compile-only devices), sized and checked."""

import jax
import ml_collections
import pytest

from experiments import fl_round_step, fl_setup
from experiments import plan as plan_lib
from experiments import planner as planning
from experiments.configs import fl_dp
from fl_dp_asr.aot import hlo, targets
from fl_dp_asr.train import utils
from tests import processes

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
        parts = fl_round_step.make_round_step(
            config, model_config, fl_setup.dp_config(config), 16.0, None
        )
    assert isinstance(parts.round_step.noise_stddev, float)


# libtpu is loaded in a subprocess: once a process has made TPU topology devices, JAX's
# profiler also starts libtpu's (jax.profiler.start_trace then crashes a CPU-only process).
SLICE_SCRIPT = """
import dataclasses, json
from experiments import plan as plan_lib
from experiments import planner as planning
from fl_dp_asr.aot import targets
from tests.aot.test_plan import tiny_config
target = targets.target("v5e-16")
devices = targets.abstract_devices(target)
planner = planning.Planner(tiny_config(), target, devices, 1.0, 64)
compiled = planner.compile(1)
text, problems = plan_lib.report(planner, compiled, [compiled], 20,
                                 planning.parameter_bytes(planner.config))
print(json.dumps({"hosts": targets.num_hosts(devices), "devices": len(devices),
                  "kind": devices[0].device_kind, "peak_bytes": compiled.peak_bytes,
                  "flops": compiled.cost.flops, "unknown_loops": compiled.cost.unknown_loops,
                  "collectives": [dataclasses.astuple(c) for c in compiled.cost.collectives],
                  "text": text, "problems": problems}))
"""


@pytest.fixture(scope="module")
def compiled_for_slice() -> dict:
    """The tiny round step compiled at chunk 1 for v5e-16 (16 chips on 4 hosts), in a
    subprocess: its report and costs."""
    return processes.run_json(SLICE_SCRIPT, devices=1, timeout=600)


@needs_libtpu
def test_the_round_step_compiles_for_a_multi_host_slice_and_fits(compiled_for_slice):
    result = compiled_for_slice
    assert (result["devices"], result["hosts"], result["kind"]) == (16, 4, "TPU v5 lite")
    assert result["peak_bytes"] < targets.CHIPS["v5e"].hbm_bytes
    assert result["flops"] > 0 and result["unknown_loops"] == []
    assert result["problems"] == []
    text = result["text"]
    assert "| 1 ← |" in text and "| fits |" in text and "4 hosts" in text
    assert "lower bound per round" in text and "MFU upper bound" in text


@needs_libtpu
def test_exactly_one_parameter_sized_all_reduce_per_round(compiled_for_slice):
    params_bytes = planning.parameter_bytes(tiny_config())
    large = [c for c in compiled_for_slice["collectives"] if c[2] >= params_bytes / 2]
    assert [(op, per_round, depth) for op, _, _, per_round, depth in large] == [
        ("all-reduce", 1, 0)
    ]


class FakeDevice:
    def __init__(self, process_index: int):
        self.process_index = process_index


def fake_planner() -> planning.Planner:
    """A planner for v5e-16 whose devices only say their host (reports need no compiler)."""
    devices = [FakeDevice(i // 4) for i in range(16)]
    return planning.Planner(tiny_config(), targets.target("v5e-16"), devices, 1.0, 64)


def fake_compiled(chunk: int, collectives=()) -> planning.Compiled:
    memory = type(
        "Memory",
        (),
        dict(
            argument_size_in_bytes=2**30,
            temp_size_in_bytes=2**30,
            output_size_in_bytes=0,
            alias_size_in_bytes=0,
            generated_code_size_in_bytes=0,
        ),
    )
    return planning.Compiled(
        chunk, memory, hlo.HloCost(1e9, 1e9, tuple(collectives), (), ()), 1.0, 0, 16
    )


def test_a_parameter_sized_collective_in_a_loop_is_a_problem():
    planner = fake_planner()
    looped = hlo.Collective("all-gather", "ag", 10 * 2**20, 16, 1)
    _, problems = plan_lib.report(
        planner,
        fake_compiled(1, [looped]),
        [fake_compiled(1)],
        20,
        planning.parameter_bytes(planner.config),
    )
    assert len(problems) == 1 and "inside a loop" in problems[0]


def test_a_program_the_compiler_refuses_for_memory_does_not_fit():
    planner = fake_planner()
    message = (
        "RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: Ran out of memory on HBM, the "
        "total memory required for HLO temporaries (36.66G) exceeds available HBM "
        "(15.75G)."
    )
    oom = planning.refused(2, message, 3.0, 32)
    assert oom.peak_bytes == int(36.66 * 2**30)
    assert not planning.fits(oom, planner.target.chip)
    text, problems = plan_lib.report(
        planner, oom, [oom], 20, planning.parameter_bytes(planner.config)
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

    def compile(self, chunk: int) -> planning.Compiled:
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
        return planning.Compiled(chunk, memory, hlo.HloCost(0, 0, (), (), ()), 0.0, 0, chunk)


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
    found, _ = planning.largest_chunk(planner, clients, log=lambda message: None)
    assert (found and found.chunk) == best
    assert planner.compiled == compiled
