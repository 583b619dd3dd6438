"""CohortStream: round → sampled, packed block with a fixed number of client slots."""

import numpy as np
import pytest

from fl_dp_asr.data import CohortStream, FederatedDataset, pack_cohort
from fl_dp_asr.fl.samplers import FixedSizeSampler, PoissonSampler
from tests.data.test_federated import BUCKETS, _source, tokenize


@pytest.fixture
def dataset():
    return FederatedDataset.from_source(_source())


def stream(dataset, sampler, **kwargs):
    return CohortStream(
        dataset, sampler, tokenize, BUCKETS, local_steps=2, batch_size=2, seed=0, **kwargs
    )


def test_a_block_packs_the_sampled_users_first_largest_first_then_padding(dataset):
    sampler = FixedSizeSampler(dataset.num_users, 2, seed=4)
    cohorts = stream(dataset, sampler, client_multiple=4)
    assert cohorts.num_slots == 4
    users = [dataset.users[i] for i in sampler.sample(5)]
    expected = pack_cohort(
        dataset,
        users,
        tokenize=tokenize,
        local_steps=2,
        batch_size=2,
        buckets=BUCKETS,
        seed=0,
        round_index=5,
        num_clients=4,
        largest_first=True,
    )
    block = cohorts.block(5)
    np.testing.assert_array_equal(block["client_mask"], [1, 1, 0, 0])
    for name in block["batches"]:
        np.testing.assert_array_equal(block["batches"][name], expected["batches"][name])


def test_every_round_has_the_same_client_axis(dataset):
    sampler = PoissonSampler(dataset.num_users, 1, seed=0)
    blocks = list(stream(dataset, sampler, client_multiple=2).blocks(3, 9))
    assert [r for r, _ in blocks] == list(range(3, 9))
    slots = {block["client_mask"].shape[0] for _, block in blocks}
    assert slots == {sampler.num_slots(2)} and sampler.num_slots(2) % 2 == 0
    sizes = [len(sampler.sample(r)) for r in range(3, 9)]
    assert [int(block["client_mask"].sum()) for _, block in blocks] == sizes


def test_a_process_packs_only_its_slots(dataset):
    sampler = FixedSizeSampler(dataset.num_users, 3, seed=1)
    whole = stream(dataset, sampler, client_multiple=4).block(0)
    part = stream(dataset, sampler, client_multiple=4, process_slots=[1, 3]).block(0)
    for name in whole["batches"]:
        np.testing.assert_array_equal(part["batches"][name], whole["batches"][name][[1, 3]])


def test_largest_first_packs_users_by_steps_rows_and_length(dataset):
    """Neighbouring slots (trained together by the vectorized executor) need similar cuts."""
    kwargs = dict(
        tokenize=tokenize,
        local_steps=3,
        batch_size=2,
        buckets=BUCKETS,
        seed=0,
        round_index=0,
        max_local_epochs=1,
        num_clients=5,
    )
    users = ["alice", None, "bob", "carol"]
    block = pack_cohort(dataset, users, largest_first=True, **kwargs)
    # carol: 7 utterances → 3 full steps; bob: 2 → 1 step of 2 rows; alice: 1 → 1 step of 1.
    expected = pack_cohort(dataset, ["carol", "bob", "alice"], **kwargs)
    for name, leaf in block["batches"].items():
        np.testing.assert_array_equal(leaf, expected["batches"][name])
    np.testing.assert_array_equal(block["step_mask"].sum(axis=1), [3, 1, 1, 0, 0])
    np.testing.assert_array_equal(block["client_mask"], [1, 1, 1, 0, 0])
    as_given = pack_cohort(dataset, users, **kwargs)
    np.testing.assert_array_equal(as_given["client_mask"], [1, 0, 1, 1, 0])
