"""Server optimizers applied to the pseudo-gradient (mean noisy clipped client delta)."""

from __future__ import annotations

import optax

from fl_dp_asr.dp.layout import SAME_LAYOUT, ParamLayout, layerwise

SERVER_OPTIMIZERS = ("sgd", "adam", "lamb")


def learning_rate_schedule(
    learning_rate: float,
    decay_begin: int | None = None,
    decay_every: int = 750,
    decay_rate: float = 0.6,
) -> optax.Schedule:
    """Constant, or exponential decay by ``decay_rate`` every ``decay_every`` rounds
    starting at round ``decay_begin`` (the paper: 0.6 per 750 rounds from round 750)."""
    if decay_begin is None:
        return optax.constant_schedule(learning_rate)
    return optax.exponential_decay(
        learning_rate,
        transition_steps=decay_every,
        decay_rate=decay_rate,
        transition_begin=decay_begin,
    )


def make_server_optimizer(
    name: str,
    learning_rate: float,
    *,
    decay_begin: int | None = None,
    decay_every: int = 750,
    decay_rate: float = 0.6,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    layout: ParamLayout = SAME_LAYOUT,
) -> optax.GradientTransformation:
    """The server optimizer by name.

    Args:
      name: ``"sgd"`` (lr 1 = FedAvg), ``"adam"`` or ``"lamb"`` (the paper: layer-wise
        normalization through LAMB's trust ratio ‖θ_h‖/‖u_h‖; lr 0.002, b1 .9, b2 .999,
        eps 1e-6).
      learning_rate: peak server learning rate.
      decay_begin, decay_every, decay_rate: see :func:`learning_rate_schedule`.
      b1, b2, eps: moment parameters of Adam and LAMB.
      layout: the layout of the server parameters (:mod:`fl_dp_asr.dp.layout`): LAMB's
        trust ratio is taken per canonical leaf (every block's layer on its own when the
        blocks are stacked), as ``optax.lamb`` does on the canonical layout.
    """
    schedule = learning_rate_schedule(learning_rate, decay_begin, decay_every, decay_rate)
    if name == "sgd":
        return optax.sgd(schedule)
    if name == "adam":
        return optax.adam(schedule, b1=b1, b2=b2, eps=eps)
    if name == "lamb":  # optax.lamb's chain (same state), its trust ratio per layer
        return optax.chain(
            optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
            optax.add_decayed_weights(0.0),
            layerwise(optax.scale_by_trust_ratio(), layout),
            optax.scale_by_learning_rate(schedule),
        )
    raise ValueError(f"server optimizer {name!r}: choose one of {SERVER_OPTIMIZERS}.")
