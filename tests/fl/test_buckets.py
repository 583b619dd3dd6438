"""Local steps on cut batches (ClientUpdate.buckets): which cut runs, in run and run_chunk."""

import jax
import jax.numpy as jnp
import numpy as np

from fl_dp_asr.fl import client
from tests.fl import toy_task

ROWS = 4


class RowBuckets:
    """Toy :class:`~fl_dp_asr.fl.client.BatchBuckets`: the first 1, 2 or 4 rows."""

    sizes = (1, 2, 4)

    def grid(self, batch):
        assert batch["x"].shape[0] == ROWS
        return (len(self.sizes),)

    def levels(self, batch):
        rows = jnp.max(jnp.where(batch["mask"] > 0, jnp.arange(1, ROWS + 1), 0))
        return jnp.sum(jnp.asarray(self.sizes) < rows, keepdims=True).astype(jnp.int32)

    def cut(self, batch, levels):
        return {name: value[: self.sizes[levels[0]]] for name, value in batch.items()}


def rows_weighted_loss(params, batch, key):
    """The toy loss times the batch's static row count: reveals which cut a step ran on."""
    loss, aux = toy_task.loss_fn(params, batch, key)
    return loss * batch["x"].shape[0], aux


def cohort(real_rows):
    """Clients × 2 steps × 4 rows; ``real_rows[c][s]`` real rows (a prefix), 0 = padded step."""
    block = toy_task.make_cohort(len(real_rows), local_steps=2, batch=ROWS)
    rows = np.asarray(real_rows)
    block["batches"]["mask"] = (np.arange(ROWS) < rows[..., None]).astype(np.float32)
    block["step_mask"] = (rows > 0).astype(np.float32)
    return block


def update(buckets=None):
    return client.make_client_update(rows_weighted_loss, client.local_sgd(0.1), buckets)


def by_hand(params, block, c, key, rows_per_step):
    """Client c's update with init/step/final called by hand on the first rows of each step."""
    state = update().init(params)
    keys = client.local_step_keys(key, len(rows_per_step))
    for s, rows in enumerate(rows_per_step):
        batch = jax.tree.map(lambda x: x[c, s, :rows], block["batches"])
        state = update().step(state, batch, block["step_mask"][c, s], keys[s])
    return update().final(params, state, block["step_mask"][c])


def assert_close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)


def test_run_cuts_each_step_to_its_own_smallest_cell():
    block = cohort([[1, 3]])
    params = toy_task.init_params(jax.random.key(0))
    key = jax.random.key(1)
    got = jax.jit(update(RowBuckets()).run)(params, jax.tree.map(lambda x: x[0], block), key)
    assert_close(got, by_hand(params, block, 0, key, [1, 4]))  # 3 real rows: the 4-row cut
    uncut = by_hand(params, block, 0, key, [4, 4])
    assert not np.allclose(got[0]["out"]["w"], uncut[0]["out"]["w"], rtol=1e-3)


def test_run_chunk_cuts_each_step_to_the_chunks_largest_cell():
    block = cohort([[1, 0], [2, 0], [1, 1]])
    params = toy_task.init_params(jax.random.key(0))
    keys = jax.random.split(jax.random.key(2), 3)
    clients = {"batches": block["batches"], "step_mask": block["step_mask"]}
    got = jax.jit(update(RowBuckets()).run_chunk)(params, clients, keys)
    for c in range(3):  # step 0: 2 rows (client 1's); step 1: 1 row (client 2 alone takes it)
        assert_close(jax.tree.map(lambda x: x[c], got), by_hand(params, block, c, keys[c], [2, 1]))


def test_without_buckets_steps_run_on_the_whole_batch():
    block = cohort([[1, 2]])
    params = toy_task.init_params(jax.random.key(0))
    key = jax.random.key(3)
    got = jax.jit(update().run)(params, jax.tree.map(lambda x: x[0], block), key)
    assert_close(got, by_hand(params, block, 0, key, [4, 4]))
