"""Audio loading and the ``python -m fl_dp_asr.cli.transcribe`` entry point."""

import re

import jax
import numpy as np
import pytest
import soundfile

from fl_dp_asr.audio.io import AudioFileError, load_audio
from fl_dp_asr.cli import transcribe
from fl_dp_asr.data import CorruptAudioError, layouts
from fl_dp_asr.models import init_params, transcribe_batch
from fl_dp_asr.text import normalize
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
    with pytest.raises(AudioFileError, match=r"missing\.flac: no such file"):
        load_audio(tmp_path / "missing.flac")
    (tmp_path / "garbage.flac").write_bytes(b"fLaC" + b"\x00" * 64)
    with pytest.raises(AudioFileError, match=r"garbage.flac: unreadable or corrupt audio \("):
        load_audio(tmp_path / "garbage.flac")


def _truncated_mp3(path):
    """An MP3 cut in half: libmpg123 decodes the first half without an error."""
    soundfile.write(path, _tone(2.0, 16_000, 1), 16_000)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert len(soundfile.read(path)[0]) > 0
    return path


def test_the_builders_and_the_transcriber_share_one_decoder(tmp_path):
    stereo = tmp_path / "stereo.wav"
    soundfile.write(stereo, _tone(0.5, 22_050, 2), 22_050, subtype="PCM_16")
    np.testing.assert_array_equal(layouts.read_audio_16k(stereo), load_audio(stereo))
    cut = _truncated_mp3(tmp_path / "cut.mp3")
    with pytest.raises(AudioFileError) as audio_error:
        load_audio(cut)
    with pytest.raises(CorruptAudioError) as data_error:
        layouts.read_audio_16k(cut)
    assert audio_error.value.reason.startswith("truncated: ")
    assert f"({audio_error.value.reason})" in str(data_error.value)


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
        padded[0, : len(audio)] = audio
        expected = transcribe_batch(restored, padded, np.array([len(audio)]), config)[0]
        assert line.split("\t")[1] == normalize(expected).text


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A trainer work directory: the checkpoint in ``checkpoints/``."""
    work = tmp_path_factory.mktemp("work")
    with Checkpointer(work / "checkpoints") as ckpt:
        ckpt.save(
            3,
            {"params": init_params(CONFIG, jax.random.key(0))},
            {"model_config": CONFIG.to_dict()},
        )
    return work


def test_cli_transcribes_the_good_files_and_reports_each_bad_one(workdir, tmp_path, capsys):
    good = tmp_path / "good.wav"
    soundfile.write(good, _tone(0.9, 16_000, 1), 16_000)
    empty, short = tmp_path / "empty.wav", tmp_path / "short.wav"
    soundfile.write(empty, np.zeros((0, 1)), 16_000)  # a header, no samples
    soundfile.write(short, _tone(0.004, 16_000, 1), 16_000)  # 4 ms < one 25 ms frame
    garbage = tmp_path / "garbage.flac"
    garbage.write_bytes(b"fLaC" + b"\x00" * 64)
    files = [tmp_path / "missing.wav", empty, good, short, garbage]
    assert transcribe.main(["--checkpoint", str(workdir), *map(str, files)]) == 1
    out, err = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(good)]
    errors = err.splitlines()
    assert errors[:3] + errors[4:] == [
        f"error: {files[0]}: no such file",
        f"error: {empty}: unreadable or corrupt audio (no audio samples)",
        f"error: {short}: too short to transcribe (4 ms; the model needs at least one 25 ms frame)",
        "error: 4 of 5 files could not be transcribed",
    ]
    assert errors[3].startswith(f"error: {garbage}: unreadable or corrupt audio (")  # libsndfile


def test_cli_rejects_a_truncated_mp3_and_a_directory(workdir, tmp_path, capsys):
    cut = _truncated_mp3(tmp_path / "cut.mp3")
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    assert transcribe.main(["--checkpoint", str(workdir), str(cut), str(folder)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    errors = err.splitlines()
    assert re.fullmatch(
        rf"error: {cut}: unreadable or corrupt audio \(truncated: [\d.]+ s "
        r"decode of the [\d.]+ s its header declares\)",
        errors[0],
    )
    assert errors[1] == f"error: {folder}: is a directory, not an audio file"


@pytest.mark.parametrize("width", ["0", "-3", "two"])
def test_cli_rejects_a_beam_width_below_one_naming_the_flag(tmp_path, capsys, width):
    with pytest.raises(SystemExit) as exit_info:
        transcribe.main(["--checkpoint", str(tmp_path), "--beam-width", width, "a.wav"])
    assert exit_info.value.code == 2
    assert f"argument --beam-width: expected an integer >= 1, got '{width}'" in (
        capsys.readouterr().err
    )


def test_cli_prints_single_spaced_text(workdir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(transcribe, "transcribe_batch", lambda *args, **kwargs: ["  t aarl  ho "])
    good = tmp_path / "good.wav"
    soundfile.write(good, _tone(0.9, 16_000, 1), 16_000)
    assert transcribe.main(["--checkpoint", str(workdir), str(good)]) == 0
    assert capsys.readouterr().out == f"{good}\tt aarl ho\n"


def test_cli_accepts_the_work_dir_and_says_which_steps_exist(workdir, tmp_path, capsys):
    assert load_model_checkpoint(workdir)[2] == load_model_checkpoint(workdir / "checkpoints")[2]
    audio = tmp_path / "a.wav"
    soundfile.write(audio, _tone(0.9, 16_000, 1), 16_000)
    assert transcribe.main(["--checkpoint", str(workdir), "--step", "7", str(audio)]) == 1
    assert "no complete checkpoint for step 7" in capsys.readouterr().err
    (tmp_path / "run" / "checkpoints" / "5").mkdir(parents=True)  # a save cut off by a crash
    assert transcribe.main(["--checkpoint", str(tmp_path / "run"), str(audio)]) == 1
    assert capsys.readouterr().err == (
        f"error: no complete checkpoint in {tmp_path}/run/checkpoints (only unfinished saves: "
        "5); give a trainer's work directory or its checkpoints/ directory\n"
    )
    (tmp_path / "empty").mkdir()
    assert transcribe.main(["--checkpoint", str(tmp_path / "empty"), str(audio)]) == 1
    assert "(no step directory)" in capsys.readouterr().err
