"""Fixtures shared by all tests: one tiny synthetic corpus, generated once per session."""

from __future__ import annotations

import os
import pathlib

from tests import processes

os.environ["XLA_FLAGS"] = f"{processes.TEST_XLA_FLAGS} {os.environ.get('XLA_FLAGS', '')}"
# The session's compilation cache, for this process and every subprocess (the trainers'
# command lines keep a cache JAX is configured with instead of ~/.cache/fl_dp_asr/xla).
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(processes.COMPILATION_CACHE)
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(processes.CACHE_MIN_COMPILE_SECONDS)

import jax
import pytest

from fl_dp_asr.data import FederatedDataset, load_federated
from fl_dp_asr.data.synthetic import generate_corpus, tiny_config


def pytest_configure(config):
    """Trainers build fresh jitted functions per run; identical programs hit this cache."""
    del config
    jax.config.update("jax_compilation_cache_dir", str(processes.COMPILATION_CACHE))
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs", processes.CACHE_MIN_COMPILE_SECONDS
    )


# The end-to-end tests (trainers, studies, device check, the documentation build: 20–90 s
# per file).
SLOW_FIRST = ("tests/experiments/", "tests/benchmarks/", "tests/test_docs.py")


def pytest_collection_modifyitems(items):
    """Runs the end-to-end test files first: `make test`'s two xdist workers take whole files
    in collection order (``--dist loadfile``), so the slow ones go out first and the many
    short unit-test files fill the end evenly, instead of one worker finishing a long file
    while the other waits."""
    items.sort(key=lambda item: not item.nodeid.startswith(SLOW_FIRST))  # stable


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> pathlib.Path:
    """A tiny corpus in both layouts (LibriSpeech: 9 utterances, Common Voice: 14)."""
    out = tmp_path_factory.mktemp("corpus")
    generate_corpus(out, tiny_config(seed=0), workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="session")
def cv_train(tiny_corpus, tfds_dir) -> FederatedDataset:
    """The tiny corpus's Common Voice layout (mp3) as a federated training split: 3 users,
    8 utterances."""
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
    """The tiny corpus's LibriSpeech layout (flac) as a federated training split: 2
    speakers, 5 utterances."""
    return load_federated(
        "librispeech_local",
        "train-clean-100",
        manual_dir=tiny_corpus,
        data_dir=tfds_dir,
        progress=False,
    )
