"""TFDS builders: build without TensorFlow, exact read-back, and the documented errors."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from fl_dp_asr.data import (
    CorruptAudioError,
    EmptyTranscriptError,
    LayoutError,
    SchemaError,
    UnsupportedCharactersError,
    get_builder,
    layouts,
    load_split,
    prepare,
)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _by_id(source) -> dict[str, dict]:
    return {_text(source[i]["utterance_id"]): source[i] for i in range(len(source))}


def test_librispeech_reads_back_exact_audio_and_text(tiny_corpus, tfds_dir):
    source = load_split(
        "librispeech_local", "train-clean-100", manual_dir=tiny_corpus, data_dir=tfds_dir
    )
    records = list(layouts.iter_librispeech(tiny_corpus, "train-clean-100"))
    examples = _by_id(source)
    assert sorted(examples) == sorted(r.utterance_id for r in records)
    for record in records:
        example = examples[record.utterance_id]
        expected, rate = soundfile.read(str(record.audio_path), dtype="int16")
        assert rate == 16_000 and example["audio"].dtype == np.int16
        np.testing.assert_array_equal(example["audio"], expected)
        assert _text(example["raw_transcript"]) == record.raw_transcript
        assert _text(example["transcript"]) == record.raw_transcript.lower()
        assert _text(example["user_id"]) == record.user_id
        assert _text(example["gender"]) in ("male", "female")
        assert example["duration"] == pytest.approx(len(expected) / 16_000)


def test_common_voice_reads_back_resampled_audio(cv_train, tiny_corpus):
    records = {r.utterance_id: r for r in layouts.iter_common_voice(tiny_corpus, "en", "train")}
    assert len(cv_train) == len(records)
    assert set(cv_train.users) == {r.user_id for r in records.values()}
    for row in range(len(cv_train)):
        record = records[cv_train.utterance_ids[row]]
        assert cv_train.user_of_row[row] == record.user_id
        decoded, rate = soundfile.read(str(record.audio_path), dtype="int16")
        assert rate == 48_000
        audio = cv_train.audio(row)
        np.testing.assert_array_equal(audio, layouts.read_audio_16k(record.audio_path))
        assert abs(len(audio) - len(decoded) / 3) <= 1
        assert cv_train.transcripts[row] == record.raw_transcript.lower().rstrip(".!?").replace(
            ",", ""
        )


def test_builds_without_tensorflow_and_reuses_the_build(tiny_corpus, tmp_path):
    script = (
        "import sys\nfrom fl_dp_asr.data import load_split\n"
        f"s = load_split('common_voice_local', 'en', 'dev', manual_dir={str(tiny_corpus)!r},"
        f" data_dir={str(tmp_path)!r})\n"
        "assert len(s) > 0 and s[0]['audio'].dtype.name == 'int16'\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    builder = get_builder("common_voice_local", "en", data_dir=tmp_path)
    assert builder.is_prepared()
    assert builder.info.metadata["skipped"] == {"train": {}, "dev": {}, "test": {}}
    assert sorted(builder.info.splits.keys()) == ["dev", "test", "train"]


def _librispeech_copy(tiny_corpus: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    """A private copy of the tiny corpus's dev-clean (2 utterances) to break."""
    root = tmp_path / "corpus"
    shutil.copytree(tiny_corpus / "LibriSpeech" / "dev-clean", root / "LibriSpeech" / "dev-clean")
    return root


def _no_dataset_left(data_dir: pathlib.Path) -> bool:
    built = data_dir / "librispeech_local" / "dev-clean"
    return not list(built.glob("*/*.array_record*")) and not list(built.glob("incomplete*"))


def test_corrupt_flac_fails_the_build_and_leaves_nothing(tiny_corpus, tmp_path):
    root = _librispeech_copy(tiny_corpus, tmp_path)
    bad = sorted(root.glob("LibriSpeech/dev-clean/*/*/*.flac"))[0]
    bad.write_bytes(b"fLaC" + b"\x00garbage" * 50)
    with pytest.raises(CorruptAudioError, match=bad.name) as error:
        load_split("librispeech_local", "dev-clean", manual_dir=root, data_dir=tmp_path / "tfds")
    assert error.value.path == str(bad)
    assert _no_dataset_left(tmp_path / "tfds")
    assert not get_builder(
        "librispeech_local", "dev-clean", data_dir=tmp_path / "tfds"
    ).is_prepared()

    source = load_split(
        "librispeech_local",
        "dev-clean",
        manual_dir=root,
        data_dir=tmp_path / "tfds",
        skip_bad_files=True,
    )
    assert len(source) == 1
    builder = get_builder("librispeech_local", "dev-clean", data_dir=tmp_path / "tfds")
    metadata = builder.info.metadata
    assert metadata["skipped"] == {"dev-clean": {"corrupt_audio": 1}}
    assert bad.name in metadata["skipped_files"][0]


@pytest.mark.parametrize(
    "text, error_type", [("", EmptyTranscriptError), ("ROOM 101", UnsupportedCharactersError)]
)
def test_bad_transcript_names_file_and_line(tiny_corpus, tmp_path, text, error_type):
    root = _librispeech_copy(tiny_corpus, tmp_path)
    index = sorted(root.glob("LibriSpeech/dev-clean/*/*/*.trans.txt"))[-1]
    lines = index.read_text().splitlines()
    utterance_id = lines[-1].split(" ")[0]
    lines[-1] = f"{utterance_id} {text}".rstrip()
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(error_type, match=rf"{index.name}:{len(lines)}:") as error:
        load_split("librispeech_local", "dev-clean", manual_dir=root, data_dir=tmp_path / "tfds")
    assert (error.value.path, error.value.line) == (str(index), len(lines))
    assert _no_dataset_left(tmp_path / "tfds")


def test_missing_tsv_column(tiny_corpus, tmp_path):
    language_dir = tmp_path / "cv" / "en"
    shutil.copytree(tiny_corpus / "cv-corpus" / "en", language_dir)
    tsv = language_dir / "dev.tsv"
    rows = [line.split("\t") for line in tsv.read_text().splitlines()]
    column = rows[0].index("sentence")
    tsv.write_text("".join("\t".join(r[:column] + r[column + 1 :]) + "\n" for r in rows))
    with pytest.raises(SchemaError, match=r"dev\.tsv:1: header lacks column\(s\) \['sentence'\]"):
        load_split(
            "common_voice_local",
            "en",
            "dev",
            manual_dir=tmp_path / "cv",
            data_dir=tmp_path / "tfds",
        )


def test_missing_directory_names_the_layout(tmp_path):
    with pytest.raises(LayoutError, match=r"<speaker>-<chapter>\.trans\.txt"):
        load_split(
            "librispeech_local",
            "dev-clean",
            manual_dir=tmp_path / "nowhere",
            data_dir=tmp_path / "tfds",
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match=r"clips"):
        load_split(
            "common_voice_local",
            "en",
            "train",
            manual_dir=tmp_path / "empty",
            data_dir=tmp_path / "tfds",
        )
    with pytest.raises(ValueError, match="unknown config"):
        get_builder("common_voice_local", "xx")


def test_changed_corpus_is_rebuilt(tiny_corpus, tmp_path):
    root = _librispeech_copy(tiny_corpus, tmp_path)
    assert (
        len(
            load_split(
                "librispeech_local", "dev-clean", manual_dir=root, data_dir=tmp_path / "tfds"
            )
        )
        == 2
    )
    index = sorted(root.glob("LibriSpeech/dev-clean/*/*/*.trans.txt"))[0]
    first = index.read_text().splitlines()[0]
    index.write_text(index.read_text().replace(first, first.split(" ")[0] + " HELLO THERE"))
    source = load_split(
        "librispeech_local", "dev-clean", manual_dir=root, data_dir=tmp_path / "tfds"
    )
    assert b"hello there" in [source[i]["transcript"] for i in range(len(source))]
    builder = prepare("librispeech_local", "dev-clean", manual_dir=None, data_dir=tmp_path / "tfds")
    assert builder.is_prepared()
