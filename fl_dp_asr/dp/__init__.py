"""Client-level differential privacy: optax transforms, the DP policy, accounting.

* :mod:`fl_dp_asr.dp.transforms`: clipping and noise as optax ``GradientTransformation``s;
* :mod:`fl_dp_asr.dp.policy`: :class:`DPConfig`, the DP settings of a round;
* :mod:`fl_dp_asr.dp.accounting`: ε of a run, noise calibration, population extrapolation.
"""

from fl_dp_asr.dp.policy import DPConfig

__all__ = ["DPConfig"]
