"""Accelerator targets by the names people rent them under, and their abstract devices.

A target is a slice or a box: ``v5e-256`` (256 TPU v5e chips, 64 hosts), ``v5p-128``
(Cloud TPU counts v4/v5p slices in TensorCores, two per chip: 64 chips), ``v4-32``,
``v6e-64``, ``h100x8`` (one host with 8 GPUs), ``h200x8``, ``a100x8``. :func:`target`
maps the name to the topology libtpu / the CUDA plugin describe (``v5e:16x16``,
``v5p:4x4x4``, ``1x1x8``) and :func:`abstract_devices` asks JAX for devices of that
topology that nothing can run on, but everything can be compiled for.

Chip figures (HBM per chip, dense bf16 peak, HBM bandwidth) are the vendors' datasheets
(:data:`CHIPS`, each with its source); they feed the plan's "fits" and roofline columns and
the device check's MFU (:func:`chip_of_device_kind` finds a running device's chip). The
MFU numerator of both is :func:`model_flops`.

Requirements: TPU targets need ``libtpu`` (``pip install libtpu``; ``make install`` adds it
where the registry has it); GPU targets need the CUDA plugin (``pip install
'jax[cuda12]'``) and ``JAX_PLATFORMS=cpu`` in the environment, which keeps the plugin from
looking for a driver (no GPU is needed).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip.

    Attributes:
        name: e.g. ``"TPU v5e"``.
        platform: ``"tpu"`` or ``"cuda"``.
        hbm_bytes: memory per chip (bytes).
        peak_flops: dense bf16 peak (FLOP/s).
        hbm_bandwidth: bytes/s.
        source: where the figures come from.
        device_kinds: substrings of ``jax.Device.device_kind`` (case-insensitive) that name
            this chip, for :func:`chip_of_device_kind`.
    """

    name: str
    platform: str
    hbm_bytes: int
    peak_flops: float
    hbm_bandwidth: float
    source: str
    device_kinds: tuple[str, ...] = ()


CHIPS: dict[str, Chip] = {
    "v4": Chip(
        "TPU v4",
        "tpu",
        32 * GIB,
        275e12,
        1228e9,
        "cloud.google.com/tpu/docs/v4 (32 GiB HBM2, 1,228 GB/s, 275 TFLOP/s bf16)",
        ("TPU v4",),
    ),
    "v5e": Chip(
        "TPU v5e",
        "tpu",
        16 * GIB,
        197e12,
        819e9,
        "cloud.google.com/tpu/docs/v5e (16 GB HBM2, 819 GB/s, 197 TFLOP/s bf16)",
        ("TPU v5 lite",),
    ),
    "v5p": Chip(
        "TPU v5p",
        "tpu",
        95 * GIB,
        459e12,
        2765e9,
        "cloud.google.com/tpu/docs/v5p (95 GB HBM2e, 2,765 GB/s, 459 TFLOP/s bf16)",
        ("TPU v5p", "TPU v5"),
    ),
    "v6e": Chip(
        "TPU v6e",
        "tpu",
        32 * GIB,
        918e12,
        1640e9,
        "cloud.google.com/tpu/docs/v6e (32 GB HBM, 1,640 GB/s, 918 TFLOP/s bf16)",
        ("TPU v6 lite",),
    ),
    "h100": Chip(
        "NVIDIA H100 SXM 80GB",
        "cuda",
        84_929_347_584,
        989e12,
        3.35e12,
        "NVIDIA H100 datasheet (80 GB HBM3, 3.35 TB/s, 989 TFLOP/s dense bf16)",
        ("H100",),
    ),
    "h200": Chip(
        "NVIDIA H200 141GB",
        "cuda",
        151_397_597_184,
        989e12,
        4.8e12,
        "NVIDIA H200 datasheet (141 GB HBM3e, 4.8 TB/s, 989 TFLOP/s dense bf16)",
        ("H200",),
    ),
    "a100": Chip(
        "NVIDIA A100 SXM 80GB",
        "cuda",
        85_100_068_864,
        312e12,
        2.039e12,
        "NVIDIA A100 datasheet (80 GB HBM2e, 2,039 GB/s, 312 TFLOP/s dense bf16)",
        ("A100",),
    ),
    # Chips the device check meets (a lent or rented GPU), not plan targets.
    "h100-pcie": Chip(
        "NVIDIA H100 PCIe 80GB",
        "cuda",
        80 * GIB,
        756e12,
        2.0e12,
        "NVIDIA H100 datasheet, PCIe column (80 GB HBM2e, 2 TB/s, 1,513 TFLOP/s bf16 with "
        "sparsity: 756 dense)",
        ("H100 PCIe",),
    ),
    "gh200": Chip(
        "NVIDIA GH200 96GB",
        "cuda",
        96 * GIB,
        989e12,
        4.0e12,
        "NVIDIA GH200 Grace Hopper Superchip datasheet (96 GB HBM3, 4 TB/s, 989 TFLOP/s "
        "dense bf16: the H100's)",
        ("GH200",),
    ),
    "b200": Chip(
        "NVIDIA B200 (HGX)",
        "cuda",
        180 * GIB,
        2250e12,
        8.0e12,
        "NVIDIA HGX B200 datasheet (180 GB HBM3e per GPU, 8 TB/s, 4.5 PFLOP/s bf16 with "
        "sparsity: 2,250 TFLOP/s dense)",
        ("B200",),
    ),
    "l40s": Chip(
        "NVIDIA L40S",
        "cuda",
        48 * GIB,
        362e12,
        864e9,
        "NVIDIA L40S datasheet (48 GB GDDR6, 864 GB/s, 362.05 TFLOP/s dense bf16, 733 with "
        "sparsity)",
        ("L40S",),
    ),
    "l4": Chip(
        "NVIDIA L4",
        "cuda",
        24 * GIB,
        121e12,
        300e9,
        "NVIDIA L4 datasheet (24 GB GDDR6, 300 GB/s, 242 TFLOP/s bf16 with sparsity: 121 dense)",
        ("L4",),
    ),
    "a10g": Chip(
        "NVIDIA A10G",
        "cuda",
        24 * GIB,
        70e12,
        600e9,
        "AWS EC2 G5 / NVIDIA A10G specifications (24 GB GDDR6, 600 GB/s, 70 TFLOP/s dense "
        "bf16 tensor; the A10's 125 does not apply)",
        ("A10G",),
    ),
}
# Cloud TPU names v4 and v5p slices by TensorCores (two per chip), v5e and v6e by chips.
_CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}
# GPU facts for the CUDA plugin's target description (gpu_device_info), per chip:
# SMs, FP32 lanes per SM, shared memory per SM / per block (opt-in), L2, clock (GHz),
# compute capability, device name.
_GPU_FACTS = {
    "h100": (132, 128, 233472, 232448, 52428800, 1.98, 9, "NVIDIA H100 80GB HBM3"),
    "h200": (132, 128, 233472, 232448, 52428800, 1.98, 9, "NVIDIA H200 141GB HBM3e"),
    "a100": (108, 64, 167936, 166912, 41943040, 1.41, 8, "NVIDIA A100-SXM4-80GB"),
}


def chip_of_device_kind(device_kind: str) -> Chip | None:
    """The chip of a ``jax.Device.device_kind`` such as ``"NVIDIA H100 80GB HBM3"``.

    The chip with the longest of its :attr:`Chip.device_kinds` found in the kind,
    case-insensitively: ``"H100 PCIe"`` wins over ``"H100"``, ``"TPU v5 lite"`` over
    ``"TPU v5"``. None when no chip's is found (e.g. a CPU).
    """
    kind = device_kind.lower()
    best: tuple[int, Chip | None] = (0, None)
    for chip in CHIPS.values():
        for sub in chip.device_kinds:
            if sub.lower() in kind and len(sub) > best[0]:
                best = (len(sub), chip)
    return best[1]


def model_flops(num_params: int, frames: float, passes: int = 6) -> float:
    """The usual MFU numerator: ``passes`` · parameters · encoder frames. 6 = forward +
    backward (no attention term); 8 counts the forward pass that remat recomputes."""
    return float(passes) * num_params * frames


@dataclasses.dataclass(frozen=True)
class Target:
    """A named slice or GPU box.

    Attributes:
        name: as given, e.g. ``"v5e-256"``.
        chip: its chips.
        num_chips: chips (devices) in all.
        topology: the name the compiler's topology takes (``"v5e:16x16"``, ``"1x1x8"``).
    """

    name: str
    chip: Chip
    num_chips: int
    topology: str


def _tpu_topology(kind: str, chips: int) -> str:
    """libtpu's topology name for ``chips`` chips: v5e/v6e are 2-D (rows ≤ columns, powers
    of two), v4/v5p 3-D (``4x4x4`` for 64 chips)."""
    if chips & (chips - 1):
        raise ValueError(f"{kind} slices have a power-of-two number of chips, not {chips}.")
    exponent = int(math.log2(chips))
    if kind in ("v5e", "v6e"):
        if chips > 256:
            raise ValueError(f"a {kind} pod has at most 256 chips, not {chips}.")
        return f"{kind}:{2 ** (exponent // 2)}x{2 ** (exponent - exponent // 2)}"
    dims = [2 ** (exponent // 3 + (i < exponent % 3)) for i in range(3)]
    return f"{kind}:{'x'.join(str(d) for d in sorted(dims, key=lambda d: (d == 1, d)))}"


def target(name: str) -> Target:
    """The target named ``name``: a Cloud TPU accelerator type (``v5e-256``, ``v5litepod-16``,
    ``v5p-128``, ``v4-32``, ``v6e-64``) or ``<gpu>x<count>`` (``h100x8``, ``h200x8``,
    ``a100x8``).

    Raises:
        ValueError: an unknown chip or a count the chip's slices do not come in, listing
            what is known.
    """
    text = name.strip().lower().replace("v5litepod", "v5e")
    tpu = re.fullmatch(r"(v4|v5e|v5p|v6e)-(\d+)", text)
    if tpu:
        kind, count = tpu.group(1), int(tpu.group(2))
        cores = _CORES_PER_CHIP[kind]
        if count % cores or count < cores:
            raise ValueError(
                f"{name}: {kind} slices are named by TensorCores ({cores} per "
                f"chip), so the number must be a multiple of {cores}."
            )
        chips = count // cores
        return Target(name, CHIPS[kind], chips, _tpu_topology(kind, chips))
    gpu = re.fullmatch(r"(h100|h200|a100)x(\d+)", text)
    if gpu:
        count = int(gpu.group(2))
        if not 1 <= count <= 8:
            raise ValueError(f"{name}: a GPU box here holds 1 to 8 GPUs (one host).")
        return Target(name, CHIPS[gpu.group(1)], count, f"1x1x{count}")
    raise ValueError(
        f"unknown target {name!r}: use a Cloud TPU type (v4-N, v5e-N, v5p-N, "
        "v6e-N, e.g. v5e-256, v5p-128) or a GPU box (h100x8, h200x8, a100x8)."
    )


def gpu_target_config(chip_key: str) -> str:
    """The CUDA plugin's target description (text ``GpuTargetConfigProto``) of a GPU chip."""
    cores, fpus, smem_core, smem_optin, l2, clock, major, device = _GPU_FACTS[chip_key]
    chip = CHIPS[chip_key]
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {smem_core}
  threads_per_core_limit: 2048
  core_count: {cores}
  fpus_per_core: {fpus}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(chip.hbm_bandwidth)}
  l2_cache_size: {l2}
  clock_rate_ghz: {clock}
  device_memory_size: {chip.hbm_bytes}
  shared_memory_per_block_optin: {smem_optin}
  cuda_compute_capability {{
    major: {major}
  }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{
  major: 9
  minor: 7
}}
runtime_version {{
  major: 12
  minor: 8
}}
device_description_str: "{device}"
"""


def abstract_devices(target_: Target) -> list:
    """Compile-only devices of ``target_`` (every chip of every host), from
    ``jax.experimental.topologies``.

    Raises:
        RuntimeError: the compiler for the target's platform is not installed (libtpu, the
            CUDA plugin), or a GPU target without ``JAX_PLATFORMS=cpu``; the message says
            what to install or set.
    """
    from jax.experimental import topologies

    chip_key = next(k for k, c in CHIPS.items() if c is target_.chip)
    try:
        if target_.chip.platform == "tpu":
            topology = _tpu_topology_desc(target_.topology)
        else:
            if os.environ.get("JAX_PLATFORMS", "") != "cpu":
                raise RuntimeError(
                    f"{target_.name}: run with JAX_PLATFORMS=cpu (otherwise the "
                    "CUDA plugin looks for a driver and fails without a GPU)."
                )
            topology = topologies.get_topology_desc(
                platform="cuda",
                target_config=gpu_target_config(chip_key),
                topology=target_.topology,
            )
    except RuntimeError:
        raise
    except Exception as error:  # the plugins raise several types (XlaRuntimeError, KeyError)
        need = (
            "libtpu (pip install libtpu)"
            if target_.chip.platform == "tpu"
            else "the CUDA plugin (pip install 'jax[cuda12]')"
        )
        raise RuntimeError(
            f"{target_.name}: no compiler for {target_.chip.name} "
            f"({type(error).__name__}: {error}). It needs {need}."
        ) from error
    devices = list(topology.devices)
    if len(devices) != target_.num_chips:
        raise RuntimeError(
            f"{target_.name}: the topology {target_.topology} has "
            f"{len(devices)} devices, expected {target_.num_chips}."
        )
    return devices


def tpu_library() -> str | None:
    """libtpu's shared library: ``$TPU_LIBRARY_PATH``, the installed ``libtpu`` package, or
    the checkout's ``.tpu-compiler/`` (where ``make install`` puts it, outside the virtual
    environment, so that JAX programs on this CPU do not try to start a TPU backend)."""
    import importlib.util

    if os.path.isfile(os.environ.get("TPU_LIBRARY_PATH", "")):
        return os.environ["TPU_LIBRARY_PATH"]
    spec = importlib.util.find_spec("libtpu")
    if spec is not None and spec.submodule_search_locations:
        found = os.path.join(next(iter(spec.submodule_search_locations)), "libtpu.so")
        if os.path.isfile(found):
            return found
    return str(LOCAL_LIBTPU) if LOCAL_LIBTPU.is_file() else None


LOCAL_LIBTPU = (
    pathlib.Path(__file__).resolve().parents[2] / ".tpu-compiler" / "libtpu" / "libtpu.so"
)


def _tpu_topology_desc(topology_name: str):
    """libtpu's compile-only topology. The process's own backends start first (without a
    TPU), then libtpu is loaded for compiling only; several processes may load it at once
    (its lockfile guards real chips, which are not used here)."""
    import jax
    from jax.experimental import topologies

    library = tpu_library()
    if library is None:
        raise RuntimeError(
            "no TPU compiler: install libtpu (`make install` puts it in "
            ".tpu-compiler/; or pip install libtpu, or set TPU_LIBRARY_PATH)."
        )
    jax.devices()
    saved = {k: os.environ.get(k) for k in ("TPU_LIBRARY_PATH", "ALLOW_MULTIPLE_LIBTPU_LOAD")}
    os.environ.update(TPU_LIBRARY_PATH=library, ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    try:
        return topologies.get_topology_desc(platform="tpu", topology_name=topology_name)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def num_hosts(devices: list) -> int:
    """The number of processes (hosts) the devices belong to."""
    return len({d.process_index for d in devices})


def tpu_compiler_available() -> bool:
    """Whether libtpu is here (TPU targets can be compiled, :func:`tpu_library`)."""
    return tpu_library() is not None
