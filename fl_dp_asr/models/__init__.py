"""Transformer CTC acoustic model (flax.linen) and its loss / evaluation functions."""

from fl_dp_asr.models.asr import (
    PARAM_LAYOUT,
    abstract_params,
    build_model,
    compute_features,
    count_params,
    ctc_loss_fn,
    evaluate,
    init_params,
    make_loss_fn,
    predict_logits,
    transcribe_batch,
)
from fl_dp_asr.models.config import MODEL_SIZES, ModelConfig, get_model_config
from fl_dp_asr.models.encoder import Encoder, stack_blocks, unstack_blocks

__all__ = [
    "MODEL_SIZES",
    "PARAM_LAYOUT",
    "Encoder",
    "ModelConfig",
    "abstract_params",
    "build_model",
    "compute_features",
    "count_params",
    "ctc_loss_fn",
    "evaluate",
    "get_model_config",
    "init_params",
    "make_loss_fn",
    "predict_logits",
    "stack_blocks",
    "transcribe_batch",
    "unstack_blocks",
]
