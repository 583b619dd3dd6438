"""Session fixtures of the memorization tests: the tiny corpus (tests/conftest.py) in both
layouts as federated training splits."""

from __future__ import annotations

import pytest

from fl_dp_asr.data import FederatedDataset, load_federated


@pytest.fixture(scope="session")
def cv_train(tiny_corpus, tfds_dir) -> FederatedDataset:
    """Common Voice layout (mp3): 3 users, 8 utterances."""
    return load_federated(
        "common_voice_local",
        "en",
        "train",
        manual_dir=tiny_corpus,
        data_dir=tfds_dir,
        progress=False,
    )


@pytest.fixture(scope="session")
def ls_train(tiny_corpus, tfds_dir) -> FederatedDataset:
    """LibriSpeech layout (flac): 2 speakers, 5 utterances."""
    return load_federated(
        "librispeech_local",
        "train-clean-100",
        manual_dir=tiny_corpus,
        data_dir=tfds_dir,
        progress=False,
    )
