"""DPConfig: every number checked at construction, and what follows from the settings."""

import doctest
import math

import jax.numpy as jnp
import pytest

from fl_dp_asr.dp import DPConfig, accounting, policy


@pytest.mark.parametrize("field", ["clip_norm", "noise_multiplier", "sigma_dp"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), -0.5])
def test_nan_inf_and_negative_numbers_are_rejected_naming_the_field(field, value):
    settings = {"clipping": "global", "clip_norm": 1.0, field: value}
    with pytest.raises(ValueError, match=f"dp.{field} must be finite"):
        DPConfig(**settings)


def test_zero_clip_norm_is_rejected_and_zero_noise_is_allowed():
    with pytest.raises(ValueError, match=r"dp\.clip_norm must be finite and > 0"):
        DPConfig("global", clip_norm=0.0)
    assert DPConfig("global", 1.0, noise_multiplier=0.0).noise_stddev(10) == 0.0
    assert DPConfig("global", 1.0, sigma_dp=0.0).noise_stddev(10) == 0.0


def test_inconsistent_settings_are_rejected():
    with pytest.raises(ValueError, match="noise without clipping"):
        DPConfig("none", noise_multiplier=1.0)
    with pytest.raises(ValueError, match="not both"):
        DPConfig("global", 1.0, noise_multiplier=1.0, sigma_dp=1e-3)
    with pytest.raises(ValueError, match=r"needs dp\.clip_norm"):
        DPConfig("per_layer")
    with pytest.raises(ValueError, match=r"dp\.clipping='median'"):
        DPConfig("median", 1.0)


def test_an_allocation_that_is_no_rule_is_rejected_at_construction():
    with pytest.raises(ValueError, match=r"dp\.allocation='bydim'.*did you mean 'by_dim'"):
        DPConfig("per_layer", 1.0, allocation="bydim")
    assert DPConfig("per_layer", 1.0, allocation={"a": 1.0}).allocation == {"a": 1.0}


def test_sigma_dp_is_converted_with_the_expected_cohort_size():
    dp = DPConfig("per_layer", 0.5, sigma_dp=1e-3)
    assert dp.resolve_noise_multiplier(1024) == pytest.approx(1.024)
    assert dp.noise_stddev(1024) == pytest.approx(1.024 * 0.5)
    direct = DPConfig("global", 0.5, noise_multiplier=0.7)
    assert direct.resolve_noise_multiplier(50) == 0.7 and direct.noise_stddev(50) == 0.35


def test_sensitivity_is_c_for_add_or_remove_and_2c_for_replace():
    dp = DPConfig("per_layer", 0.01)
    assert dp.sensitivity(accounting.ADD_OR_REMOVE_ONE_USER) == 0.01
    assert dp.sensitivity(accounting.REPLACE_ONE_USER) == 0.02
    assert DPConfig("none").sensitivity(accounting.ADD_OR_REMOVE_ONE_USER) == math.inf
    with pytest.raises(ValueError, match="neighboring_relation"):
        dp.sensitivity("add-one-user")


@pytest.mark.parametrize("clipping", policy.CLIPPINGS)
def test_the_clipping_transform_bounds_the_delta_by_the_clip_norm(clipping):
    dp = DPConfig(clipping, clip_norm=None if clipping == "none" else 1.0)
    clip = dp.clipping_transform()
    delta = {"a": jnp.array([30.0, 40.0]), "b": jnp.array([0.1])}
    clipped, stats = clip.update(delta, clip.init(delta))
    norm = float(jnp.sqrt(jnp.sum(clipped["a"] ** 2) + jnp.sum(clipped["b"] ** 2)))
    if clipping == "none":
        assert norm == pytest.approx(float(stats.global_norm)) and float(stats.clipped) == 0
    else:
        assert norm <= 1.0 + 1e-6 and float(stats.clipped) == 1.0


def test_docstring_examples_run():
    failures, tried = doctest.testmod(policy)
    assert tried >= 2 and failures == 0
