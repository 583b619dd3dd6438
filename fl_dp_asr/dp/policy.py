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

With ``target_unclipped_quantile`` set, the bounds adapt every round
(:mod:`fl_dp_asr.dp.adaptive`): C is the *initial* bound, the delta noise uses the current
bound C_t and z_Δ = (z⁻² − z_b⁻²)^(−½), and z (what the accountant sees) stays the overall
noise multiplier of the round.

With ``correlated_noise`` (:class:`fl_dp_asr.dp.correlated.CorrelatedNoise`, DP-FTRL) the
noise of round t is the t-th row of z·C·C⁻¹Z instead of a fresh draw: still added once to
the sum, with a noise state in the server state; ε then follows from the strategy and the
min-separation participation (a ``CyclicSampler``), without amplification by sampling.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import optax

from fl_dp_asr.dp import accounting, adaptive, checks, correlated, transforms

CLIPPINGS = ("none", "global", "per_layer", "rescale_per_layer")
ADAPTIVE_CLIPPINGS = ("global", "per_layer")
# clip(delta, clip_bounds) -> (clipped delta, ClipStats, {bound name: unclipped bit})
ClientClip = Callable[[Any, dict[str, Any]], tuple[Any, transforms.ClipStats, dict[str, Any]]]
LAYER_GROUPINGS = {"leaf": transforms.leaf_layer_name, "module": transforms.top_module_name}


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
            noise. With adaptive clipping both are the *overall* z of the round (delta and
            clipped-count queries together).
        layers: what a "layer" of per-layer clipping is: ``"leaf"`` (every parameter
            array) or ``"module"`` (the top-level modules, e.g. one per transformer
            block: fewer bounds H).
        target_unclipped_quantile: γ ∈ [0, 1] turns on adaptive clipping (global or
            per layer): each bound tracks the γ-quantile of its clients' delta norms;
            ``None``: fixed bounds.
        clip_norm_lr: η ≥ 0, the geometric learning rate of the adaptive bounds.
        clipped_count_stddev: σ_b ≥ 0, noise std on each summed unclipped-count;
            ``None``: S/20 (TFF's default), S the expected cohort size.
        correlated_noise: ``None`` (independent Gaussian noise every round) or a
            :class:`~fl_dp_asr.dp.correlated.CorrelatedNoise` (BLT or banded Toeplitz):
            the round adds its correlated noise, std z·C before C⁻¹. Needs fixed clipping
            (global or per layer; the adaptive bounds' count query is not accounted
            under min-separation participation).

    Raises:
        ValueError: at construction, naming the field: an unknown ``clipping``,
            ``allocation`` string or ``layers``; a NaN, infinite or negative (``clip_norm``:
            non-positive) number; clipping without ``clip_norm``; both noise settings; noise
            without clipping.

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
    layers: str = "leaf"
    target_unclipped_quantile: float | None = None
    clip_norm_lr: float = 0.2
    clipped_count_stddev: float | None = None
    correlated_noise: correlated.CorrelatedNoise | None = None

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
            raise ValueError(
                "give dp.noise_multiplier (z, std on the sum / C) or dp.sigma_dp "
                "(std on the mean / C), not both."
            )
        if (self.noise_multiplier or self.sigma_dp) and self.clipping == "none":
            raise ValueError(
                "noise without clipping gives no privacy: set dp.clipping and "
                "dp.clip_norm, or remove the noise."
            )
        transforms.check_allocation("dp.allocation", self.allocation)
        if self.layers not in LAYER_GROUPINGS:
            raise ValueError(f"dp.layers={self.layers!r}: choose one of {tuple(LAYER_GROUPINGS)}.")
        self._check_adaptive()
        self._check_correlated()

    def _check_correlated(self) -> None:
        if self.correlated_noise is None:
            return
        if not isinstance(self.correlated_noise, correlated.CorrelatedNoise):
            raise ValueError(
                "dp.correlated_noise must be a fl_dp_asr.dp.correlated."
                f"CorrelatedNoise or None, got {self.correlated_noise!r}."
            )
        self.check_fixed_bounds(
            "correlated noise (dp.correlated_noise)",
            "the clipped-count query is not accounted under min-separation participation",
        )

    def check_fixed_bounds(self, feature: str, adaptive_reason: str) -> None:
        """Raises ValueError, naming ``feature``, unless the clipping has fixed bounds: no
        clipping, or adaptive clipping (``adaptive_reason`` says why ``feature`` refuses it)."""
        if self.clipping == "none":
            raise ValueError(
                f"{feature} needs clipping (fixed clip bounds): set dp.clipping and dp.clip_norm."
            )
        if self.adaptive:
            raise ValueError(
                f"{feature} needs fixed clip bounds, not adaptive clipping "
                f"(dp.target_unclipped_quantile): {adaptive_reason}. Set "
                "dp.target_unclipped_quantile=None."
            )

    @property
    def mechanism(self) -> str:
        """``"gaussian"`` (a fresh draw every round) or the correlated noise's kind."""
        return "gaussian" if self.correlated_noise is None else self.correlated_noise.kind

    def _check_adaptive(self) -> None:
        checks.check_positive("dp.clip_norm_lr", self.clip_norm_lr, allow_zero=True)
        if self.clipped_count_stddev is not None:
            checks.check_positive(
                "dp.clipped_count_stddev", self.clipped_count_stddev, allow_zero=True
            )
        gamma = self.target_unclipped_quantile
        if gamma is None:
            return
        if not (
            checks.check_positive("dp.target_unclipped_quantile", gamma, allow_zero=True) <= 1.0
        ):
            raise ValueError(f"dp.target_unclipped_quantile must be in [0, 1], got {gamma!r}")
        if self.clipping not in ADAPTIVE_CLIPPINGS:
            raise ValueError(
                f"adaptive clipping (dp.target_unclipped_quantile) needs "
                f"dp.clipping in {ADAPTIVE_CLIPPINGS}, got {self.clipping!r}."
            )

    @property
    def adaptive(self) -> bool:
        """Whether the clip bounds adapt (``target_unclipped_quantile`` is set)."""
        return self.target_unclipped_quantile is not None

    @property
    def layer_fn(self) -> transforms.LayerFn:
        """Maps a parameter's key path to its layer name (``layers``)."""
        return LAYER_GROUPINGS[self.layers]

    def initial_clip_bounds(
        self, params: Any, layout: transforms.ParamLayout = transforms.SAME_LAYOUT
    ) -> dict[str, float]:
        """The bounds of round 0, ``{name: C_h}``: ``{"global": C}`` for global clipping,
        the allocation's per-layer bounds for per-layer clipping, ``{}`` for none
        (``params`` in ``layout``, :mod:`fl_dp_asr.dp.layout`; names of the canonical
        layout)."""
        if self.clipping == "none":
            return {}
        if self.clipping == "global":
            return {adaptive.GLOBAL: float(self.clip_bound)}
        return transforms.layer_bounds(
            self.clip_bound, self.allocation, params, self.layer_fn, layout
        )

    def count_stddev(self, expected_cohort_size: float) -> float:
        """σ_b: the given ``clipped_count_stddev`` or S/20; 0 without adaptive clipping."""
        if not self.adaptive:
            return 0.0
        if self.clipped_count_stddev is not None:
            return float(self.clipped_count_stddev)
        return expected_cohort_size / 20.0

    def noise_multipliers(
        self, expected_cohort_size: float, num_bounds: int
    ) -> tuple[float, float, float]:
        """``(z, z_Δ, z_b)``: the overall multiplier the accountant uses, the delta sum's
        and the clipped-count query's (z_b = 2σ_b/√H; without adaptive clipping
        ``(z, z, 0)``).

        Raises:
            ValueError: ``0 ≤ z_b ≤ z`` with ``z > 0`` (nothing left for the deltas).
        """
        z = self.resolve_noise_multiplier(expected_cohort_size)
        if not self.adaptive:
            return z, z, 0.0
        z_b = adaptive.count_noise_multiplier(self.count_stddev(expected_cohort_size), num_bounds)
        return z, adaptive.delta_noise_multiplier(z, z_b), z_b

    @property
    def clip_bound(self) -> float:
        """C (``clip_norm``) of a config that clips; construction checked that it is set."""
        if self.clip_norm is None:
            raise ValueError(f"dp.clipping={self.clipping!r} has no dp.clip_norm.")
        return self.clip_norm

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
        return noise_multiplier * self.clip_bound if noise_multiplier > 0 else 0.0

    def sensitivity(self, neighboring_relation: str) -> float:
        """L2 sensitivity of the sum of clipped deltas: C (add or remove one user) or 2C
        (replace one user); ∞ without clipping.

        Args:
            neighboring_relation: ``accounting.ADD_OR_REMOVE_ONE_USER`` (Poisson sampling)
                or ``accounting.REPLACE_ONE_USER`` (fixed-size sampling).
        """
        clip_norm = math.inf if self.clipping == "none" else self.clip_bound
        return accounting.sensitivity(clip_norm, neighboring_relation)

    def clipping_transform(
        self, layout: transforms.ParamLayout = transforms.SAME_LAYOUT
    ) -> optax.GradientTransformation:
        """The per-client clipping transform (for ``"none"``: the identity, with statistics)
        of deltas in ``layout`` (:mod:`fl_dp_asr.dp.layout`)."""
        if self.clipping == "global":
            return transforms.clip_by_global_norm(self.clip_bound, layout)
        if self.clipping == "per_layer":
            return transforms.clip_per_layer(
                self.clip_bound, self.allocation, self.layer_fn, layout
            )
        if self.clipping == "rescale_per_layer":
            return transforms.rescale_per_layer(
                self.clip_bound, self.allocation, self.layer_fn, layout
            )
        return transforms.clip_by_global_norm(math.inf, layout)

    def client_clip(self, layout: transforms.ParamLayout = transforms.SAME_LAYOUT) -> ClientClip:
        """How the round clips one client's delta: ``clip(delta, clip_bounds) -> (Δ̃,
        ClipStats, bits)``. Fixed clipping applies :meth:`clipping_transform` (bounds
        ``{}``, no bits); adaptive clipping clips to the round's bounds
        (:func:`fl_dp_asr.dp.adaptive.clip`). Deltas are in ``layout``."""
        if self.adaptive:
            layer_fn = self.layer_fn
            return lambda delta, bounds: adaptive.clip(delta, bounds, layer_fn, layout)
        transform = self.clipping_transform(layout)

        def fixed(delta, bounds):
            del bounds
            return (*transform.update(delta, transform.init(delta)), {})

        return fixed
