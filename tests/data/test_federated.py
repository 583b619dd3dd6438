"""Federated view and cohort packing, on an in-memory source (no TFDS) and on the tiny corpus."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from fl_dp_asr.data import (
    CohortPackingError,
    FederatedDataset,
    LengthBuckets,
    client_steps,
    cohort_summary,
    epoch_batches,
    iterate_batches,
    make_batch,
    pack_cohort,
)

USERS = {"alice": 1, "bob": 2, "carol": 7}
BUCKETS = LengthBuckets(max_samples=(1000, 2000, 4000), max_label_len=(8, 16, 32))


def tokenize(text: str) -> np.ndarray:
    """Trivial tokenizer: one id per character (a=1 ... z=26, space=27)."""
    return np.asarray([27 if c == " " else ord(c) - 96 for c in text], np.int32)


def _source():
    """Examples whose every audio sample equals its index + 1, so rows can be identified."""
    rng = np.random.default_rng(0)
    examples = []
    for user, count in USERS.items():
        for k in range(count):
            length = int(rng.integers(300, 1800))
            examples.append(
                {
                    "audio": np.full(length, len(examples) + 1, np.int16),
                    "user_id": user.encode(),
                    "utterance_id": f"{user}-{k}",
                    "transcript": f"{user} said {'ab' * k}",
                }
            )
    return examples


@pytest.fixture
def dataset():
    return FederatedDataset.from_source(_source())


def _identify(block, client):
    """Source indices of the real utterances of each step of ``client`` (from the audio)."""
    batches = block["batches"]
    steps = []
    for s in range(block["step_mask"].shape[1]):
        rows = [
            int(batches["audio"][client, s, b, 0]) - 1
            for b in range(batches["mask"].shape[2])
            if batches["mask"][client, s, b]
        ]
        steps.append(rows)
    return steps


def test_grouping_counts_and_durations(dataset):
    assert dataset.users == ("alice", "bob", "carol")
    np.testing.assert_array_equal(dataset.user_num_utterances(), [1, 2, 7])
    assert dataset.hours == pytest.approx(dataset.num_samples.sum() / 16_000 / 3600)


def test_packing_preserves_every_utterance_once(dataset):
    block = pack_cohort(
        dataset,
        ["carol", "alice", "bob"],
        tokenize=tokenize,
        local_steps=4,
        batch_size=2,
        buckets=BUCKETS,
        seed=0,
        round_index=0,
        max_local_epochs=1,
    )
    batches = block["batches"]
    for client, user in enumerate(["carol", "alice", "bob"]):
        steps = _identify(block, client)
        used = sorted(r for step in steps for r in step)
        assert used == sorted(dataset.source_indices[dataset.rows_of(user)].tolist())
        for s, rows in enumerate(steps):
            for b, row in enumerate(rows):
                length = dataset.num_samples[row]
                assert batches["audio_lengths"][client, s, b] == length
                assert np.all(batches["audio"][client, s, b, :length] == row + 1)
                assert not batches["audio"][client, s, b, length:].any()
                label = tokenize(dataset.transcripts[row])
                np.testing.assert_array_equal(batches["labels"][client, s, b, : len(label)], label)
                assert batches["label_lengths"][client, s, b] == len(label)
    # alice: one utterance, one pass -> one real step; the others are padded and masked.
    np.testing.assert_array_equal(block["step_mask"][1], [1, 0, 0, 0])
    np.testing.assert_array_equal(block["step_mask"][0], [1, 1, 1, 1])
    padding = batches["mask"] == 0
    for key in ("audio", "labels"):
        assert not batches[key][padding].any()
    for key in ("audio_lengths", "label_lengths"):
        assert not batches[key][padding].any()
    assert not batches["mask"][block["step_mask"] == 0].any()
    assert cohort_summary(block) == {
        "clients": 3.0,
        "steps": 6.0,
        "utterances": 10.0,
        "audio_seconds": pytest.approx(dataset.hours * 3600),
        "mean_steps": 2.0,
        "real_step_fraction": 0.5,
        "real_utterance_fraction": pytest.approx(10 / 24),
    }


def test_small_clients_cycle_through_their_data(dataset):
    block = pack_cohort(
        dataset,
        ["alice", "bob"],
        tokenize=tokenize,
        local_steps=5,
        batch_size=4,
        buckets=BUCKETS,
        seed=1,
        round_index=3,
    )
    assert block["step_mask"].all()
    alice, bob = _identify(block, 0), _identify(block, 1)
    assert all(len(step) == 1 for step in alice)
    assert all(sorted(step) == [1, 2] for step in bob)


def test_padding_clients_are_masked_and_zero(dataset):
    block = pack_cohort(
        dataset,
        ["bob", None],
        tokenize=tokenize,
        local_steps=2,
        batch_size=3,
        buckets=BUCKETS,
        seed=0,
        round_index=0,
        num_clients=4,
    )
    np.testing.assert_array_equal(block["client_mask"], [1, 0, 0, 0])
    assert block["batches"]["audio"].shape == (4, 2, 3, 2000)
    assert block["batches"]["labels"].shape == (4, 2, 3, 16)
    assert not block["step_mask"][1:].any()
    for leaf in block["batches"].values():
        assert not leaf[1:].any()
    with pytest.raises(CohortPackingError, match="do not fit"):
        pack_cohort(
            dataset,
            ["bob", "alice"],
            tokenize=tokenize,
            local_steps=1,
            batch_size=1,
            buckets=BUCKETS,
            seed=0,
            round_index=0,
            num_clients=1,
        )
    with pytest.raises(CohortPackingError, match="'dave' is not in this dataset"):
        pack_cohort(
            dataset,
            ["dave"],
            tokenize=tokenize,
            local_steps=1,
            batch_size=1,
            buckets=BUCKETS,
            seed=0,
            round_index=0,
        )


def test_a_process_packs_only_its_slots_with_the_whole_cohorts_bucket(dataset):
    """Multi-process: each process packs its slots (``keep``); the parts share one shape."""
    kwargs = dict(
        tokenize=tokenize,
        local_steps=2,
        batch_size=2,
        buckets=BUCKETS,
        seed=0,
        round_index=1,
        num_clients=4,
    )
    users = ["alice", "carol", "bob"]
    whole = pack_cohort(dataset, users, **kwargs)
    parts = [pack_cohort(dataset, users, keep=keep, **kwargs) for keep in ([0, 2], [1, 3])]
    for part, keep in zip(parts, ([0, 2], [1, 3])):
        jax.tree.map(lambda p, w: np.testing.assert_array_equal(p, w[keep]), part, whole)
    alone = pack_cohort(dataset, ["alice"], **kwargs)  # a smaller bucket than the cohort's
    assert alone["batches"]["labels"].shape[-1] < parts[0]["batches"]["labels"].shape[-1]
    with pytest.raises(CohortPackingError, match="outside"):
        pack_cohort(dataset, users, keep=[4], **kwargs)


def test_local_data_is_a_function_of_seed_round_and_user(dataset):
    def steps(seed, round_index):
        return client_steps(
            dataset, "carol", local_steps=6, batch_size=3, seed=seed, round_index=round_index
        )

    assert steps(0, 5) == steps(0, 5)
    assert steps(0, 5) != steps(0, 6) or steps(0, 5) != steps(1, 5)
    alone = pack_cohort(
        dataset,
        ["carol"],
        tokenize=tokenize,
        local_steps=3,
        batch_size=2,
        buckets=BUCKETS,
        seed=0,
        round_index=2,
    )
    together = pack_cohort(
        dataset,
        ["bob", "carol"],
        tokenize=tokenize,
        local_steps=3,
        batch_size=2,
        buckets=BUCKETS,
        seed=0,
        round_index=2,
    )
    assert _identify(alone, 0) == _identify(together, 1)
    for step in steps(0, 5):
        assert len(step) == len(set(step)) <= 3


def test_max_batch_seconds(dataset):
    limit = 2000 / 16_000
    for step in client_steps(
        dataset,
        "carol",
        local_steps=7,
        batch_size=4,
        seed=0,
        round_index=0,
        max_batch_seconds=limit,
    ):
        assert len(step) == 1 or dataset.num_samples[step].sum() <= 2000


def test_buckets(dataset):
    assert BUCKETS.fit(1000, 9) == (1000, 16)
    with pytest.raises(CohortPackingError, match="largest bucket"):
        BUCKETS.fit(4001, 1)
    with pytest.raises(ValueError, match="increasing"):
        LengthBuckets(max_samples=(2, 1))
    fitted = LengthBuckets.for_dataset(dataset, tokenize, num_buckets=3)
    assert fitted.max_samples[-1] >= dataset.num_samples.max()
    assert len(fitted.max_samples) == 3 and fitted.max_label_len[-1] % 8 == 0


def test_evaluation_batches_cover_every_utterance_sorted_by_length(dataset):
    seen = []
    for batch in iterate_batches(dataset, batch_size=4, tokenize=tokenize, buckets=BUCKETS):
        assert batch["audio"].shape[0] == 4 and batch["mask"].dtype == np.float32
        seen += [int(batch["audio"][b, 0]) - 1 for b in range(4) if batch["mask"][b]]
    assert sorted(seen) == list(range(len(dataset)))
    assert np.all(np.diff(dataset.num_samples[seen]) >= 0)
    batch = make_batch(dataset, [0, 1], tokenize=tokenize, buckets=BUCKETS, batch_size=3)
    np.testing.assert_array_equal(batch["mask"], [1, 1, 0])
    assert {k: v.dtype.name for k, v in batch.items()} == {
        "audio": "int16",
        "audio_lengths": "int32",
        "labels": "int32",
        "label_lengths": "int32",
        "mask": "float32",
    }


def test_training_epochs_cover_every_row_once_and_depend_on_seed_and_epoch():
    lengths = np.random.default_rng(0).integers(100, 10_000, 103)
    epoch = epoch_batches(lengths, batch_size=8, seed=3, epoch=1, sort_window=4)
    assert len(epoch) == 13 and sorted(np.concatenate(epoch).tolist()) == list(range(103))
    assert [b.tolist() for b in epoch] == [
        b.tolist() for b in epoch_batches(lengths, 8, seed=3, epoch=1, sort_window=4)
    ]
    assert [b.tolist() for b in epoch] != [
        b.tolist() for b in epoch_batches(lengths, 8, seed=3, epoch=2, sort_window=4)
    ]

    # Length-sorted windows: a batch spans less of the length range than a shuffled one.
    def spread(batches):
        return np.mean([np.ptp(lengths[b]) for b in batches if len(b) == 8])

    assert spread(epoch) < 0.5 * spread(epoch_batches(lengths, 8, 3, 1, sort_window=0))


def test_views_and_index_cache(dataset, tmp_path):
    assert dataset.subset_users(["bob"]).user_num_utterances().tolist() == [2]
    short = dataset.filter(max_seconds=1000 / 16_000)
    assert (short.num_samples <= 1000).all() and len(short) < len(dataset)
    cache = tmp_path / "index.npz"
    FederatedDataset.from_source(_source(), cache_path=cache)
    cached = FederatedDataset.from_source(_source(), cache_path=cache)
    assert cached.transcripts == dataset.transcripts and cached.users == dataset.users
    np.testing.assert_array_equal(cached.num_samples, dataset.num_samples)


def test_pack_real_corpus(cv_train):
    users = list(cv_train.users)
    buckets = LengthBuckets.for_dataset(cv_train, tokenize_text, num_buckets=2)
    block = pack_cohort(
        cv_train,
        users + [None],
        tokenize=tokenize_text,
        local_steps=2,
        batch_size=2,
        buckets=buckets,
        seed=0,
        round_index=0,
    )
    batches = block["batches"]
    assert batches["audio"].shape[:3] == (len(users) + 1, 2, 2)
    first = cv_train.rows_of(users[0])
    lengths = set(cv_train.num_samples[first].tolist())
    assert set(batches["audio_lengths"][0][batches["mask"][0] > 0].tolist()) <= lengths


def tokenize_text(text: str) -> np.ndarray:
    """Trivial tokenizer for normalized text: a-z, space, apostrophe, hyphen."""
    alphabet = "abcdefghijklmnopqrstuvwxyz '-"
    return np.asarray([alphabet.index(c) + 1 for c in text], np.int32)
