"""A small federated task (2-layer MLP regression) to exercise the round step in tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

FEATURES, HIDDEN = 8, 16


def init_params(key: jax.Array) -> dict:
    k1, k2 = jax.random.split(key)
    return {
        "hidden": {
            "w": jax.random.normal(k1, (FEATURES, HIDDEN)) / np.sqrt(FEATURES),
            "b": jnp.zeros(HIDDEN),
        },
        "out": {"w": jax.random.normal(k2, (HIDDEN, 1)) / np.sqrt(HIDDEN), "b": jnp.zeros(1)},
    }


def loss_fn(params, batch, key):
    """Masked mean squared error; the contract of docs/CONTRACTS.md."""
    del key
    h = jnp.tanh(batch["x"] @ params["hidden"]["w"] + params["hidden"]["b"])
    pred = (h @ params["out"]["w"] + params["out"]["b"])[..., 0]
    per_example = jnp.square(pred - batch["y"])
    count = jnp.sum(batch["mask"])
    loss = jnp.sum(per_example * batch["mask"]) / jnp.maximum(count, 1.0)
    return loss, {"num_utterances": count}


def make_cohort(
    num_clients: int,
    local_steps: int = 3,
    batch: int = 4,
    seed: int = 0,
    real_clients: int | None = None,
    steps_per_client=None,
) -> dict:
    """Random client blocks ``[clients, local_steps, batch, ...]`` with masks.

    Clients share a linear target up to a client-specific perturbation (non-IID).
    ``real_clients`` leaves the rest as padding clients; ``steps_per_client`` gives each client
    fewer real steps.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num_clients, local_steps, batch, FEATURES)).astype(np.float32)
    shared = np.random.default_rng(1234).normal(size=FEATURES)
    w = (shared + 0.3 * rng.normal(size=(num_clients, 1, 1, FEATURES))).astype(np.float32)
    y = np.sum(x * w, axis=-1).astype(np.float32)
    real = num_clients if real_clients is None else real_clients
    client_mask = (np.arange(num_clients) < real).astype(np.float32)
    if steps_per_client is None:
        steps_per_client = np.full(num_clients, local_steps)
    step_mask = np.arange(local_steps)[None] < np.asarray(steps_per_client)[:, None]
    step_mask = (step_mask * client_mask[:, None]).astype(np.float32)
    mask = np.broadcast_to(step_mask[:, :, None], (num_clients, local_steps, batch))
    return {
        "batches": {"x": x, "y": y, "mask": mask.astype(np.float32)},
        "step_mask": step_mask,
        "client_mask": client_mask,
    }
