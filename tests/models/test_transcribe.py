"""Audio loading and the ``python -m fl_dp_asr.transcribe`` entry point."""

import jax
import numpy as np
import pytest
import soundfile

from fl_dp_asr import transcribe
from fl_dp_asr.audio.io import load_audio
from fl_dp_asr.models import init_params, transcribe_batch
from fl_dp_asr.train.checkpoint import Checkpointer, load_model_checkpoint
from tests.models.test_model import CONFIG


def _tone(seconds, rate, channels):
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 3 * t)
    return np.stack([mono, 0.5 * mono], axis=1)[:, :channels]


def test_load_audio_resamples_and_downmixes(tmp_path):
    path = tmp_path / "stereo.wav"
    soundfile.write(path, _tone(1.5, 22_050, 2), 22_050, subtype="PCM_16")
    audio = load_audio(path)
    assert audio.dtype == np.int16 and abs(len(audio) - 24_000) <= 1
    expected_peak = 0.75 * 0.3 * 32768  # mean of the two channels
    assert abs(np.abs(audio).max() - expected_peak) < 0.03 * expected_peak
    with pytest.raises(ValueError, match="cannot read audio file"):
        load_audio(tmp_path / "missing.flac")


def test_cli_decodes_wav_flac_mp3_with_the_checkpointed_model(tmp_path, capsys):
    params = init_params(CONFIG, jax.random.key(0))
    with Checkpointer(tmp_path / "work") as ckpt:
        ckpt.save(5, {"params": params}, {"model_config": CONFIG.to_dict()})
    config, restored, step = load_model_checkpoint(tmp_path / "work")
    assert config == CONFIG and step == 5

    files = {"a.wav": (22_050, 2), "b.flac": (8_000, 1), "c.mp3": (44_100, 2)}
    for name, (rate, channels) in files.items():
        soundfile.write(tmp_path / name, _tone(0.9, rate, channels), rate)
    paths = [str(tmp_path / name) for name in files]
    assert transcribe.main(["--checkpoint", str(tmp_path / "work"), *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == paths

    for path, line in zip(paths, lines):  # the same text as decoding the array directly
        audio = load_audio(path)
        padded = np.zeros((1, 16_000), np.int16)
        padded[0, :len(audio)] = audio
        expected = transcribe_batch(restored, padded, np.array([len(audio)]), config)[0]
        assert line.split("\t")[1] == expected

    assert transcribe.main(["--checkpoint", str(tmp_path / "empty"), paths[0]]) == 1
