"""Client-level differential privacy: optax transforms, the DP policy, accounting.

* :mod:`fl_dp_asr.dp.transforms`: clipping and noise as optax ``GradientTransformation`` values;
* :mod:`fl_dp_asr.dp.policy`: :class:`DPConfig`, the DP settings of a round;
* :mod:`fl_dp_asr.dp.accounting`: ε of a run, noise calibration, population extrapolation.

``from fl_dp_asr.dp import DPConfig`` imports the policy (and JAX) on first use only, so the
privacy calculator (:mod:`fl_dp_asr.cli.privacy`, accounting only) starts without JAX.
"""

__all__ = ["DPConfig"]


def __getattr__(name: str):
    if name == "DPConfig":
        from fl_dp_asr.dp.policy import DPConfig  # pylint: disable=import-outside-toplevel

        return DPConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
