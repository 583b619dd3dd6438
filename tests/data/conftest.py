"""Session fixtures of the data tests: the tiny corpus (tests/conftest.py) as datasets."""

from __future__ import annotations

import pytest

from fl_dp_asr.data import FederatedDataset, load_federated


@pytest.fixture(scope="session")
def cv_train(tiny_corpus, tfds_dir) -> FederatedDataset:
    return load_federated(
        "common_voice_local",
        "en",
        "train",
        manual_dir=tiny_corpus,
        data_dir=tfds_dir,
        progress=False,
    )
