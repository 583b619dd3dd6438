"""User-level DP settings of a federated round, and what follows from them.

:class:`DPConfig` is the one place for the DP decisions of a run: how a client's delta is
clipped (:meth:`DPConfig.clipping_transform`), how much noise the sum gets
(:meth:`DPConfig.noise_stddev`) and the sensitivity that noise is measured against
(:meth:`DPConfig.sensitivity`). Every number is checked when the config is made.

DP semantics (one user = one client, Δ = θ_server − θ_client):

* each client's delta is clipped to ‖Δ̃‖ ≤ C (globally, or per layer with Σ_h C_h² = C²);
* the server adds N(0, (z·C)²) once to the sum of the clipped deltas, z the noise
    multiplier, and divides by the expected cohort size S;
* the paper's σ_DP is the noise std on the mean in units of C: z = S·σ_DP
    (:func:`fl_dp_asr.dp.accounting.sigma_dp_to_noise_multiplier`).
"""

from __future__ import annotations

import dataclasses
import math

import optax

from fl_dp_asr.dp import accounting, checks, transforms

CLIPPINGS = ("none", "global", "per_layer", "rescale_per_layer")


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """User-level DP settings of a round (the keys of ``config.dp`` in the trainers).

    Attributes:
        clipping: ``"none"``, ``"global"``, ``"per_layer"`` (paper definition) or
            ``"rescale_per_layer"`` (the reference code's variant).
        clip_norm: C > 0, the L2 bound of one client's delta (parameter units); required
            unless ``clipping="none"``.
        allocation: per-layer bounds: ``"uniform"``, ``"by_dim"``, a mapping
            ``{layer name: C_h}`` or a pytree of per-leaf bounds
            (:func:`fl_dp_asr.dp.transforms.layer_bounds`).
        noise_multiplier: z ≥ 0, noise std on the **sum** in units of C.
        sigma_dp: σ_DP ≥ 0, noise std on the **mean** in units of C (the paper's knob).
            Give at most one of ``noise_multiplier`` and ``sigma_dp``; neither means no
            noise.

    Raises:
        ValueError: at construction, naming the field: an unknown ``clipping``; a NaN,
            infinite or negative (``clip_norm``: non-positive) number; clipping without
            ``clip_norm``; both noise settings; noise without clipping.

    Example:
        >>> from fl_dp_asr.dp import DPConfig
        >>> dp = DPConfig("per_layer", clip_norm=0.01, sigma_dp=1e-4)
        >>> round(dp.noise_stddev(expected_cohort_size=16), 10)
        1.6e-05
    """
    clipping: str = "per_layer"
    clip_norm: float | None = None
    allocation: transforms.Allocation = "uniform"
    noise_multiplier: float | None = None
    sigma_dp: float | None = None

    def __post_init__(self):
        if self.clipping not in CLIPPINGS:
            raise ValueError(f"dp.clipping={self.clipping!r}: choose one of {CLIPPINGS}.")
        if self.clip_norm is not None:
            checks.check_positive("dp.clip_norm", self.clip_norm)
        for name in ("noise_multiplier", "sigma_dp"):
            if getattr(self, name) is not None:
                checks.check_positive(f"dp.{name}", getattr(self, name), allow_zero=True)
        if self.clipping != "none" and self.clip_norm is None:
            raise ValueError(f"dp.clipping={self.clipping!r} needs dp.clip_norm > 0.")
        if self.noise_multiplier is not None and self.sigma_dp is not None:
            raise ValueError("give dp.noise_multiplier (z, std on the sum / C) or dp.sigma_dp "
                             "(std on the mean / C), not both.")
        if (self.noise_multiplier or self.sigma_dp) and self.clipping == "none":
            raise ValueError("noise without clipping gives no privacy: set dp.clipping and "
                             "dp.clip_norm, or remove the noise.")

    def resolve_noise_multiplier(self, expected_cohort_size: float) -> float:
        """z for this run: given directly, or z = S·σ_DP for the expected cohort size S."""
        if self.sigma_dp is not None:
            return accounting.sigma_dp_to_noise_multiplier(self.sigma_dp, expected_cohort_size)
        return float(self.noise_multiplier or 0.0)

    def noise_stddev(self, expected_cohort_size: float) -> float:
        """Std of the Gaussian noise on the sum of clipped deltas, z·C (parameter units).

        0 without noise (and always without clipping, where noise is refused).
        """
        noise_multiplier = self.resolve_noise_multiplier(expected_cohort_size)
        return noise_multiplier * self.clip_norm if noise_multiplier > 0 else 0.0

    def sensitivity(self, neighboring_relation: str) -> float:
        """L2 sensitivity of the sum of clipped deltas: C (add or remove one user) or 2C
        (replace one user); ∞ without clipping.

        Args:
            neighboring_relation: ``accounting.ADD_OR_REMOVE_ONE_USER`` (Poisson sampling)
                or ``accounting.REPLACE_ONE_USER`` (fixed-size sampling).
        """
        clip_norm = math.inf if self.clipping == "none" else self.clip_norm
        return accounting.sensitivity(clip_norm, neighboring_relation)

    def clipping_transform(self) -> optax.GradientTransformation:
        """The per-client clipping transform (for ``"none"``: the identity, with statistics)."""
        if self.clipping == "global":
            return transforms.clip_by_global_norm(self.clip_norm)
        if self.clipping == "per_layer":
            return transforms.clip_per_layer(self.clip_norm, self.allocation)
        if self.clipping == "rescale_per_layer":
            return transforms.rescale_per_layer(self.clip_norm, self.allocation)
        return transforms.clip_by_global_norm(math.inf)
