"""Model configuration: one frozen, hashable dataclass (a static jit argument) that also
round-trips through JSON, so checkpoints carry it in their metadata.

Named sizes (parameter counts with the 30-token vocabulary, from ``jax.eval_shape``):

========  ======  =====  =====  =====  =======  ==========
name      blocks  dim    MLP    heads  conv ch  parameters
========  ======  =====  =====  =====  =======  ==========
paper     36      768    3072   4      1536     255.80 M
small     12      384    1536   4      768      21.70 M
tiny      4       144    576    4      288      1.16 M
========  ======  =====  =====  =====  =======  ==========
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fl_dp_asr.audio.augment import SpecAugmentConfig
from fl_dp_asr.audio.features import LogMelConfig
from fl_dp_asr.text.tokenizer import VOCAB_SIZE

# Names of ``encoder.REMAT_POLICIES`` (the jax.checkpoint policies live with the encoder;
# this module validates configs without importing it).
REMAT_POLICY_NAMES = ("nothing", "dots", "dots_no_batch")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the CTC model and its input pipeline.

    Attributes:
        vocab_size: output tokens including the CTC blank (id 0).
        num_blocks, model_dim, mlp_dim, num_heads: transformer encoder sizes.
        conv_channels: channels of the Conv1D front end before the GLU (which halves them;
            a projection follows when ``conv_channels // 2 != model_dim``).
        conv_kernel, conv_stride: front-end kernel (frames) and stride (30 ms output frames
            with stride 3 on 10 ms features).
        use_bias: biases in the attention and MLP projections (the paper has none).
        activation: ``"gelu"`` or ``"relu"`` in the MLP.
        dropout_rate: residual/MLP dropout; attention_dropout_rate: on attention weights.
        layer_drop_rate: probability of skipping a whole block at train time (per batch).
        cape_max_global_shift: CAPE global shift, seconds (±, uniform per utterance).
        cape_max_local_shift: CAPE local shift, in output frames (±half, per frame).
        cape_max_global_scaling: CAPE global scale λ, log-uniform in [1/s, s].
        cape_freq_scale: CAPE frequency scale (positions are in seconds).
        dtype: compute dtype, ``"float32"`` or ``"bfloat16"``; param_dtype: parameters.
        remat: rematerialize each block in the backward pass (saves accelerator memory).
        remat_policy: what a rematerialized block keeps from its forward pass:
            ``"nothing"`` (recompute the whole block), ``"dots"`` (keep every matmul
            output), ``"dots_no_batch"`` (keep matmul outputs without batch dimensions);
            see ``fl_dp_asr.models.encoder.REMAT_POLICIES``.
        loss_normalization: per-utterance CTC loss as ``"sum"`` (negative log-likelihood)
            or ``"per_token"`` (divided by the label length).
        features: log-mel options; spec_augment: SpecAugment options (train only).
    """

    vocab_size: int = VOCAB_SIZE
    num_blocks: int = 4
    model_dim: int = 144
    mlp_dim: int = 576
    num_heads: int = 4
    conv_channels: int = 288
    conv_kernel: int = 7
    conv_stride: int = 3
    use_bias: bool = False
    activation: str = "gelu"
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    layer_drop_rate: float = 0.0
    cape_max_global_shift: float = 30.0
    cape_max_local_shift: float = 1.0
    cape_max_global_scaling: float = 1.1
    cape_freq_scale: float = 30.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: bool = False
    remat_policy: str = "nothing"
    loss_normalization: str = "sum"
    features: LogMelConfig = LogMelConfig()
    spec_augment: SpecAugmentConfig = SpecAugmentConfig()

    def __post_init__(self):
        if self.model_dim % self.num_heads or self.model_dim % 2:
            raise ValueError(
                f"model_dim {self.model_dim} must be even and divisible by "
                f"num_heads {self.num_heads}"
            )
        if self.conv_channels % 2:
            raise ValueError(f"conv_channels {self.conv_channels} must be even (GLU)")
        if self.activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu', got {self.activation!r}")
        if self.loss_normalization not in ("sum", "per_token"):
            raise ValueError(
                f"loss_normalization must be 'sum' or 'per_token', got {self.loss_normalization!r}"
            )
        if self.remat_policy not in REMAT_POLICY_NAMES:
            raise ValueError(
                f"remat_policy must be one of {REMAT_POLICY_NAMES}, got {self.remat_policy!r}"
            )
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in ("float32", "bfloat16"):
                raise ValueError(
                    f"{name} must be 'float32' or 'bfloat16', got {getattr(self, name)!r}"
                )

    @property
    def frame_seconds(self) -> float:
        """Duration of one encoder output frame (0.03 s with the defaults)."""
        return self.conv_stride * self.features.frame_step_ms / 1000.0

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with ``changes``; ``features``/``spec_augment`` accept dicts of changes."""
        for name in ("features", "spec_augment"):
            if isinstance(changes.get(name), Mapping):
                changes[name] = dataclasses.replace(getattr(self, name), **changes[name])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable dict (nested dicts for ``features``, ``spec_augment``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ValueError."""
        values = dict(values)
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := set(values) - known:
            raise ValueError(f"unknown ModelConfig keys {sorted(unknown)}")
        if "features" in values:
            values["features"] = LogMelConfig(**values["features"])
        if "spec_augment" in values:
            values["spec_augment"] = SpecAugmentConfig(**values["spec_augment"])
        return cls(**values)


MODEL_SIZES: dict[str, dict[str, Any]] = {
    # arXiv 2310.00098 "Model": 36 pre-LN blocks, dim 768, MLP 3072, 4 heads, conv 1536 ch,
    # no biases, dropout and layer-drop 0.3, bfloat16 compute, float32 params.
    "paper": dict(
        num_blocks=36,
        model_dim=768,
        mlp_dim=3072,
        num_heads=4,
        conv_channels=1536,
        dropout_rate=0.3,
        attention_dropout_rate=0.3,
        layer_drop_rate=0.3,
        dtype="bfloat16",
    ),
    "small": dict(
        num_blocks=12,
        model_dim=384,
        mlp_dim=1536,
        num_heads=4,
        conv_channels=768,
        dropout_rate=0.1,
        attention_dropout_rate=0.1,
        layer_drop_rate=0.1,
    ),
    # Trains on 2 CPU cores in minutes.
    "tiny": dict(
        num_blocks=4,
        model_dim=144,
        mlp_dim=576,
        num_heads=4,
        conv_channels=288,
        dropout_rate=0.1,
        attention_dropout_rate=0.1,
        layer_drop_rate=0.0,
    ),
}


def get_model_config(size: str = "tiny", **overrides: Any) -> ModelConfig:
    """The named size (``paper``, ``small``, ``tiny``) with ``overrides`` applied.

    >>> get_model_config("paper").num_blocks
    36
    >>> config = get_model_config("tiny", dtype="bfloat16", spec_augment={"enabled": False})
    >>> config.spec_augment.enabled
    False
    """
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {sorted(MODEL_SIZES)}")
    return ModelConfig().replace(**{**MODEL_SIZES[size], **overrides})
