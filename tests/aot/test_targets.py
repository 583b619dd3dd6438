"""Target names → chips and libtpu topologies; compile-only devices of a multi-host slice."""

import pytest

from fl_dp_asr.aot import targets


@pytest.mark.parametrize(
    "name, chips, topology",
    [
        ("v5e-256", 256, "v5e:16x16"),
        ("v5e-64", 64, "v5e:8x8"),
        ("v5e-16", 16, "v5e:4x4"),
        ("v5litepod-4", 4, "v5e:2x2"),
        ("v5p-128", 64, "v5p:4x4x4"),
        ("v4-128", 64, "v4:4x4x4"),
        ("v4-32", 16, "v4:2x2x4"),
        ("v5p-8", 4, "v5p:2x2x1"),
        ("v6e-64", 64, "v6e:8x8"),
        ("h100x8", 8, "1x1x8"),
        ("H200x4", 4, "1x1x4"),
    ],
)
def test_slice_names_map_to_chips_and_topologies(name, chips, topology):
    target = targets.target(name)
    assert (target.num_chips, target.topology) == (chips, topology)


@pytest.mark.parametrize(
    "name, message",
    [
        ("v5p-3", "multiple of 2"),
        ("v5e-12", "power-of-two"),
        ("v5e-512", "at most 256"),
        ("h100x16", "1 to 8"),
        ("tpu-v9", "unknown target"),
    ],
)
def test_bad_names_are_refused_with_the_reason(name, message):
    with pytest.raises(ValueError, match=message):
        targets.target(name)


def test_every_device_kind_finds_its_own_chip():
    for chip in targets.CHIPS.values():
        for kind in chip.device_kinds:
            assert targets.chip_of_device_kind(f"vendor {kind.upper()} 80GB") is chip, kind
    assert targets.chip_of_device_kind("NVIDIA H100 PCIe") is targets.CHIPS["h100-pcie"]
    assert targets.chip_of_device_kind("NVIDIA L40S") is targets.CHIPS["l40s"]
    assert targets.chip_of_device_kind("cpu") is None


def test_gpu_target_config_carries_the_chip_memory():
    text = targets.gpu_target_config("h100")
    assert f"device_memory_size: {targets.CHIPS['h100'].hbm_bytes}" in text
    assert 'device_description_str: "NVIDIA H100 80GB HBM3"' in text
