"""The trainers' shared machinery and configs: schedules, signals, models and DP from configs."""

import dataclasses
import doctest
import json
import os
import re
import signal

import pytest

from experiments import fl_setup
from experiments.configs import central, fl_dp
from fl_dp_asr.data import builders, synthetic
from fl_dp_asr.data.errors import LayoutError
from fl_dp_asr.dp import DPConfig
from fl_dp_asr.text import CharTokenizer
from fl_dp_asr.train import utils


def test_itstime_is_every_n_steps_and_the_last():
    assert [s for s in range(1, 11) if utils.itstime(s, 4, 10)] == [4, 8, 10]
    assert [s for s in range(1, 6) if utils.itstime(s, None, 5)] == [5]
    failures, tried = doctest.testmod(utils)
    assert tried >= 1 and failures == 0


def test_stop_signals_are_recorded_and_the_handlers_restored():
    before = signal.getsignal(signal.SIGTERM)
    with utils.StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_write_json_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / "summary.json")
    utils.write_json(path, {"wer": 0.5})
    with open(path, encoding="utf-8") as f:
        assert json.load(f) == {"wer": 0.5}
    assert os.listdir(tmp_path) == ["summary.json"]


def test_model_overrides_apply_and_none_keeps_the_size():
    model = central.get_config("demo").model
    assert utils.model_config_from(model) == utils.model_config_from(fl_dp.get_config("demo").model)
    model.num_blocks = 1
    assert utils.model_config_from(model).num_blocks == 1


@pytest.mark.parametrize("module", [central, fl_dp])
def test_the_demo_is_a_smaller_variant_of_the_paper_recipe(module):
    paper, demo = module.get_config(), module.get_config("demo")
    assert paper.keys() == demo.keys()
    assert paper.model.size == "paper" and demo.model.size == "tiny"
    with pytest.raises(ValueError, match="unknown variant 'laptop'"):
        module.get_config("laptop")


def test_the_dp_section_holds_the_dp_config_fields():
    dp = fl_setup.dp_config(fl_dp.get_config())
    assert dp == DPConfig("per_layer", 0.01, "uniform", sigma_dp=3e-6)
    names = {f.name for f in dataclasses.fields(DPConfig)} - {"correlated_noise"}
    assert names <= set(fl_dp.get_config().dp.keys())  # correlated noise: dp.mechanism


@pytest.mark.parametrize("skip", [False, True])
def test_load_data_passes_skip_bad_files_to_the_builders(monkeypatch, tmp_path, skip):
    seen = []

    def fake_load_federated(name, config, split, **kwargs):
        seen.append(kwargs["skip_bad_files"])
        raise LookupError("stop here: the call was made")

    monkeypatch.setattr(builders, "load_federated", fake_load_federated)
    data = fl_dp.get_config("demo").data
    data.manual_dir = str(tmp_path)
    data.skip_bad_files = skip
    with pytest.raises(LookupError, match="stop here"):
        utils.load_data(data, CharTokenizer(), 8)
    assert seen == [skip]


def test_a_named_corpus_directory_that_is_missing_is_a_layout_error(monkeypatch, tmp_path):
    """The demo config generates the synthetic corpus on demand, but only where it lives."""

    def no_generation(*args, **kwargs):
        raise AssertionError("a corpus was generated into the named directory")

    monkeypatch.setattr(synthetic, "generate_corpus", no_generation)
    data = central.get_config("demo").data
    data.manual_dir, data.data_dir = str(tmp_path / "nowhere"), str(tmp_path / "tfds")
    named = re.escape(f"config.data.manual_dir='{tmp_path / 'nowhere'}' is not a directory")
    with pytest.raises(LayoutError, match=f"(?s){named}.*LibriSpeech/SPEAKERS.TXT"):
        utils.load_data(data, CharTokenizer(), 8)
    assert not (tmp_path / "nowhere").exists()


def test_the_synthetic_corpus_is_generated_where_the_config_says_it_lives(monkeypatch, tmp_path):
    generated = []

    def fake_generate(out_dir, corpus_config):
        generated.append(out_dir)
        raise LookupError("stop here: the corpus would be generated")

    monkeypatch.setattr(synthetic, "generate_corpus", fake_generate)
    data = central.get_config("demo").data
    data.manual_dir = data.synthetic_dir = str(tmp_path / "synthetic")
    with pytest.raises(LookupError, match="stop here"):
        utils.load_data(data, CharTokenizer(), 8)
    assert generated == [tmp_path / "synthetic"]


def test_load_data_checks_the_training_split_before_the_held_out_split(monkeypatch, tmp_path):
    loaded = []

    def fake_load_federated(name, config, split, **kwargs):
        loaded.append(split)
        return split

    monkeypatch.setattr(builders, "load_federated", fake_load_federated)
    data = fl_dp.get_config("demo").data
    data.manual_dir = str(tmp_path)

    def refuse(train):
        raise ValueError(f"refused {train}")

    with pytest.raises(ValueError, match="refused train"):
        utils.load_data(data, CharTokenizer(), 8, check_train=refuse)
    assert loaded == ["train"]
