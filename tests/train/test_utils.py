"""The trainers' shared machinery and configs: schedules, signals, models and DP from configs."""

import dataclasses
import doctest
import json
import os
import signal

import pytest

from experiments import train_fl
from experiments.configs import central, fl_dp
from fl_dp_asr.dp import DPConfig
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
    assert json.loads(open(path, encoding="utf-8").read()) == {"wer": 0.5}
    assert os.listdir(tmp_path) == ["summary.json"]


def test_model_overrides_apply_and_none_keeps_the_size():
    model = central.get_config("demo").model
    assert utils.model_config_from(model) == utils.model_config_from(
        fl_dp.get_config("demo").model)
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
    dp = train_fl.dp_config(fl_dp.get_config().dp)
    assert dp == DPConfig("per_layer", 0.01, "uniform", sigma_dp=3e-6)
    names = {f.name for f in dataclasses.fields(DPConfig)}
    assert names <= set(fl_dp.get_config().dp.keys())
