"""Fixtures shared by all tests: one tiny synthetic corpus, generated once per session."""

from __future__ import annotations

import pathlib
import tempfile

import jax
import pytest

from fl_dp_asr.data.synthetic import generate_corpus, tiny_config


def pytest_configure(config):
    """Trainers build fresh jitted functions per run; identical programs hit this cache."""
    del config
    cache_dir = pathlib.Path(tempfile.gettempdir()) / "fl_dp_asr_test_jax_cache"
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> pathlib.Path:
    """A tiny corpus in both layouts (LibriSpeech: 9 utterances, Common Voice: 14)."""
    out = tmp_path_factory.mktemp("corpus")
    generate_corpus(out, tiny_config(seed=0), workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("tfds")
