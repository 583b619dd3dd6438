"""Real-world corpus damage, built from copies of the tiny synthetic corpus: each is refused with
an error naming the file or directory, or skipped and reported, never silently lost."""

from __future__ import annotations

import logging
import pathlib
import shutil

import numpy as np
import pytest
import soundfile

from fl_dp_asr.data import (
    CorruptAudioError,
    DataError,
    LayoutError,
    MissingTranscriptError,
    get_builder,
    layouts,
    load_federated,
    load_split,
)
from fl_dp_asr.data.stats import main as stats_main


def librispeech_copy(tiny_corpus: pathlib.Path, root: pathlib.Path, subset: str) -> pathlib.Path:
    """``root`` holding a private copy of one LibriSpeech subset of the tiny corpus."""
    shutil.copytree(tiny_corpus / "LibriSpeech" / subset, root / "LibriSpeech" / subset)
    return root


def common_voice_copy(tiny_corpus: pathlib.Path, root: pathlib.Path) -> pathlib.Path:
    """``root`` holding a private copy of the tiny corpus's Common Voice ``en``."""
    shutil.copytree(tiny_corpus / "cv-corpus" / "en", root / "cv-corpus" / "en")
    return root


def test_empty_common_voice_split_is_not_built_and_the_others_are(
    tiny_corpus, tmp_path, capsys, caplog
):
    root = common_voice_copy(tiny_corpus, tmp_path / "corpus")
    test_tsv = root / "cv-corpus" / "en" / "test.tsv"
    test_tsv.write_text(test_tsv.read_text().splitlines()[0] + "\n")  # header only
    data_dir = tmp_path / "tfds"
    with caplog.at_level(logging.WARNING):
        train = load_split("common_voice_local", "en", "train", manual_dir=root, data_dir=data_dir)
    assert len(train) == 8
    assert f"{test_tsv} lists no utterance: split 'test'" in caplog.text
    builder = get_builder("common_voice_local", "en", data_dir=data_dir)
    assert sorted(builder.info.splits.keys()) == ["dev", "train"]
    assert builder.info.metadata["empty_splits"] == {"test": str(test_tsv)}
    with pytest.raises(
        DataError,
        match=rf"split 'test' of common_voice_local/en is empty: "
        rf"{test_tsv} lists no utterance; use one of",
    ):
        load_split("common_voice_local", "en", "test", manual_dir=root, data_dir=data_dir)
    assert (
        stats_main(
            [
                "--dataset",
                "common_voice_local",
                "--config",
                "en",
                "--split",
                "train",
                "--manual-dir",
                str(root),
                "--data-dir",
                str(data_dir),
            ]
        )
        == 0
    )
    assert "common_voice_local/en train: 3 users, 8 utterances" in capsys.readouterr().out


def test_chapter_without_transcript_is_refused_or_skipped_and_reported(tiny_corpus, tmp_path):
    root = librispeech_copy(tiny_corpus, tmp_path / "corpus", "test-clean")
    transcript = sorted(root.glob("LibriSpeech/test-clean/*/*/*.trans.txt"))[0]
    transcript.unlink()
    flac = next(transcript.parent.glob("*.flac")).name
    with pytest.raises(
        MissingTranscriptError,
        match=rf"{transcript.parent} holds 1 file\(s\) "
        rf"\({flac}\) but no {transcript.name}, so none of its utterances",
    ):
        load_split("librispeech_local", "test-clean", manual_dir=root, data_dir=tmp_path / "a")
    source = load_split(
        "librispeech_local",
        "test-clean",
        manual_dir=root,
        data_dir=tmp_path / "b",
        skip_bad_files=True,
    )
    assert len(source) == 1
    metadata = get_builder("librispeech_local", "test-clean", data_dir=tmp_path / "b").info.metadata
    assert metadata["skipped"] == {"test-clean": {"missing_transcript": 1}}
    assert metadata["skipped_files"][0].startswith(f"[test-clean] {transcript.parent} holds")


def test_truncated_mp3_is_corrupt_audio(tiny_corpus, tmp_path):
    root = common_voice_copy(tiny_corpus, tmp_path / "corpus")
    clip = next(layouts.iter_common_voice(root, "en", "dev")).audio_path
    complete = len(layouts.read_audio_16k(clip))
    clip.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    assert len(soundfile.read(clip)[0]) > 0  # libmpg123 decodes the first half silently
    with pytest.raises(
        CorruptAudioError,
        match=r"truncated: [\d.]+ s decode of the [\d.]+ s its "
        r"header declares",
    ) as error:
        layouts.read_audio_16k(clip)
    assert error.value.path == str(clip) and complete > 0
    source = load_split(
        "common_voice_local",
        "en",
        "dev",
        manual_dir=root,
        data_dir=tmp_path / "tfds",
        skip_bad_files=True,
    )
    assert len(source) == 3
    builder = get_builder("common_voice_local", "en", data_dir=tmp_path / "tfds")
    assert builder.info.metadata["skipped"]["dev"] == {"corrupt_audio": 1}


def test_audio_in_another_format_is_a_layout_error_naming_what_is_there(tiny_corpus, tmp_path):
    root = librispeech_copy(tiny_corpus, tmp_path / "corpus", "dev-clean")
    flacs = sorted(root.glob("LibriSpeech/dev-clean/*/*/*.flac"))
    for flac in flacs:
        audio, rate = soundfile.read(flac, dtype="int16")
        soundfile.write(flac.with_suffix(".wav"), audio, rate)
        flac.unlink()
    for skip_bad_files in (False, True):
        with pytest.raises(
            LayoutError,
            match=rf"{flacs[0]} is missing, but "
            rf"{flacs[0].stem}\.wav is there: the corpus index "
            r"names \.flac files\. Convert the audio",
        ):
            load_split(
                "librispeech_local",
                "dev-clean",
                manual_dir=root,
                data_dir=tmp_path / "tfds",
                skip_bad_files=skip_bad_files,
            )


def test_missing_audio_says_no_such_file_and_a_split_cannot_lose_everything(tiny_corpus, tmp_path):
    root = librispeech_copy(tiny_corpus, tmp_path / "corpus", "dev-clean")
    flacs = sorted(root.glob("LibriSpeech/dev-clean/*/*/*.flac"))
    for flac in flacs:
        flac.unlink()
    with pytest.raises(
        CorruptAudioError,
        match=rf"{flacs[0]}: unreadable or corrupt audio "
        r"\(no such file\)",
    ):
        load_split("librispeech_local", "dev-clean", manual_dir=root, data_dir=tmp_path / "tfds")
    with pytest.raises(
        DataError,
        match=r"every utterance of split 'dev-clean' was skipped "
        r"\(\{'corrupt_audio': 2\}\); the first: .*no such file",
    ):
        load_split(
            "librispeech_local",
            "dev-clean",
            manual_dir=root,
            data_dir=tmp_path / "tfds",
            skip_bad_files=True,
        )


def test_stats_command_skips_bad_files_on_request_and_a_later_default_caller_is_told(
    tiny_corpus, tmp_path, capsys, caplog
):
    root = librispeech_copy(tiny_corpus, tmp_path / "corpus", "dev-clean")
    bad = sorted(root.glob("LibriSpeech/dev-clean/*/*/*.flac"))[0]
    bad.write_bytes(b"fLaC" + b"\x00garbage" * 50)
    args = [
        "--dataset",
        "librispeech_local",
        "--config",
        "dev-clean",
        "--manual-dir",
        str(root),
        "--data-dir",
        str(tmp_path / "tfds"),
    ]
    assert stats_main(args) == 2
    error = capsys.readouterr().err.splitlines()[-1]  # after TFDS's progress bars
    assert error.startswith(f"error: {bad}: unreadable or corrupt audio")
    assert "python -m fl_dp_asr.data.stats ... --skip-bad-files" in error
    assert stats_main([*args, "--skip-bad-files"]) == 0
    assert "librispeech_local/dev-clean: 1 users, 1 utterances" in capsys.readouterr().out
    with caplog.at_level(logging.WARNING):
        reused = load_federated(
            "librispeech_local",
            "dev-clean",
            manual_dir=root,
            data_dir=tmp_path / "tfds",
            progress=False,
        )
    assert len(reused) == 1
    assert (
        "was prepared with skip_bad_files=True and lacks 1 skipped utterance(s) "
        "(dev-clean: 1 corrupt_audio)"
    ) in caplog.text


@pytest.mark.parametrize(
    "raw, gender",
    [
        ("F", "female"),
        ("M", "male"),
        ("female_feminine", "female"),
        ("male_masculine", "male"),
        ("female", "female"),
        ("non-binary", "other"),
        ("transgender", "other"),
        ("intersex", "other"),
        ("other", "other"),
        ("do_not_wish_to_say", ""),
        ("", ""),
    ],
)
def test_gender_has_one_vocabulary(raw, gender):
    assert layouts.normalize_gender(raw) == gender


def test_both_corpora_give_the_same_gender_vocabulary(cv_train, tiny_corpus, tfds_dir):
    librispeech = load_federated(
        "librispeech_local",
        "train-clean-100",
        manual_dir=tiny_corpus,
        data_dir=tfds_dir,
        progress=False,
    )
    for dataset in (cv_train, librispeech):
        assert set(dataset.genders) <= {"female", "male"}
        assert set(dataset.user_genders()) <= {"female", "male"}
    assert np.asarray(cv_train.source[0]["gender"]).item() in (b"female", b"male")
