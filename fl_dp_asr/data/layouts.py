"""Readers of the official LibriSpeech and Common Voice directory layouts, and audio decoding.

The readers list utterances (ids, speaker, audio path, raw transcript, where the transcript
is written) without touching audio; :func:`read_audio_16k` decodes one file to 16 kHz int16.
The same code reads the real corpora and the synthetic one (`fl_dp_asr.data.synthetic`).

LibriSpeech (https://www.openslr.org/12)::

    <root>/LibriSpeech/SPEAKERS.TXT      ";" comments, then "ID | SEX | SUBSET | MINUTES | NAME"
    <root>/LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
    <root>/LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac

Common Voice (https://commonvoice.mozilla.org/datasets)::

    <root>/<cv-corpus-VERSION>/<lang>/{train,dev,test,validated,...}.tsv
    <root>/<cv-corpus-VERSION>/<lang>/clips/<name>.mp3

``<root>`` may also be the ``LibriSpeech`` directory itself, or the directory holding
``<lang>/``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import pathlib
import sys
from collections.abc import Iterator

import numpy as np
import soundfile

from fl_dp_asr.audio import io as audio_io
from fl_dp_asr.data.errors import (
    CorruptAudioError,
    LayoutError,
    MissingTranscriptError,
    SchemaError,
)

SAMPLE_RATE = 16_000

LIBRISPEECH_SUBSETS = (
    "train-clean-100",
    "train-clean-360",
    "train-other-500",
    "dev-clean",
    "dev-other",
    "test-clean",
    "test-other",
)
LIBRISPEECH_LAYOUT = """\
  <manual_dir>/LibriSpeech/SPEAKERS.TXT            (optional)
  <manual_dir>/LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
  <manual_dir>/LibriSpeech/<subset>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
(<manual_dir> may also be the LibriSpeech directory itself)"""

COMMON_VOICE_SPLITS = ("train", "dev", "test")
#: Header of the Common Voice tsv files since v15 (v13/v14 lack sentence_id, sentence_domain).
COMMON_VOICE_COLUMNS = (
    "client_id",
    "path",
    "sentence_id",
    "sentence",
    "sentence_domain",
    "up_votes",
    "down_votes",
    "age",
    "gender",
    "accents",
    "variant",
    "locale",
    "segment",
)
COMMON_VOICE_REQUIRED_COLUMNS = ("client_id", "path", "sentence")
COMMON_VOICE_LAYOUT = """\
  <manual_dir>/<cv-corpus-VERSION>/<lang>/{train,dev,test}.tsv  (client_id, path, sentence, ...)
  <manual_dir>/<cv-corpus-VERSION>/<lang>/clips/<path>            (mp3)
(<manual_dir> may also be the directory that holds <lang>/ directly)"""

#: The gender vocabulary of both corpora ("" = not given).
GENDERS = ("female", "male", "other", "")
_GENDER_OF = {
    "f": "female",
    "female": "female",
    "female_feminine": "female",  # LibriSpeech F, CV <= v16
    "m": "male",
    "male": "male",
    "male_masculine": "male",  # and CV >= v17
    "other": "other",
    "intersex": "other",
    "transgender": "other",
    "non-binary": "other",
}


@dataclasses.dataclass(frozen=True)
class UtteranceRecord:
    """One utterance listed by a corpus index (no audio loaded).

    Attributes:
        utterance_id: unique id (LibriSpeech ``19-198-0000``; Common Voice the clip name
            without extension).
        user_id: LibriSpeech speaker id, Common Voice ``client_id``.
        audio_path: the audio file.
        raw_transcript: the text as written in the index.
        index_path: the file that holds the transcript.
        line: 1-based line of the transcript in ``index_path``.
        gender: one of :data:`GENDERS` (normalized with :func:`normalize_gender`).
    """

    utterance_id: str
    user_id: str
    audio_path: pathlib.Path
    raw_transcript: str
    index_path: pathlib.Path
    line: int
    gender: str = ""


def normalize_gender(raw: str) -> str:
    """One of :data:`GENDERS` for a LibriSpeech ``SEX`` (``F``/``M``) or a Common Voice
    ``gender`` (``female_feminine``, ``male_masculine``, ``intersex``, ``transgender``,
    ``non-binary``, ``do_not_wish_to_say``, or the older ``female``/``male``/``other``).

    ``do_not_wish_to_say``, empty and unrecognized values are ``""``.

    >>> normalize_gender("female_feminine"), normalize_gender("M"), normalize_gender("")
    ('female', 'male', '')
    """
    return _GENDER_OF.get(raw.strip().lower(), "")


@dataclasses.dataclass(frozen=True)
class SpeakerInfo:
    """One row of LibriSpeech's SPEAKERS.TXT."""

    speaker_id: str
    sex: str
    subset: str
    minutes: float
    name: str


# ---------------------------------------------------------------------------------------------
# LibriSpeech
# ---------------------------------------------------------------------------------------------


def find_librispeech_dir(root: str | pathlib.Path, subset: str) -> pathlib.Path:
    """Returns ``<root>/LibriSpeech/<subset>`` (or ``<root>/<subset>``); LayoutError if absent."""
    root = pathlib.Path(root)
    for candidate in (root / "LibriSpeech" / subset, root / subset):
        if candidate.is_dir():
            return candidate
    raise LayoutError(
        f"LibriSpeech subset {subset!r} not found under {str(root)!r}. "
        f"Expected layout:\n{LIBRISPEECH_LAYOUT}"
    )


def read_librispeech_speakers(path: str | pathlib.Path) -> dict[str, SpeakerInfo]:
    """Parses SPEAKERS.TXT (``;`` comment lines, ``|``-separated fields; names may hold ``|``)."""
    path = pathlib.Path(path)
    speakers = {}
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        fields = [f.strip() for f in line.split("|", 4)]
        if len(fields) != 5:
            raise SchemaError(
                f"{path}:{line_number}: expected 'ID | SEX | SUBSET | MINUTES | NAME', got {line!r}"
            )
        speaker_id, sex, subset, minutes, name = fields
        try:
            speakers[speaker_id] = SpeakerInfo(speaker_id, sex, subset, float(minutes), name)
        except ValueError:
            raise SchemaError(
                f"{path}:{line_number}: MINUTES {minutes!r} is not a number"
            ) from None
    return speakers


def librispeech_index_files(subset_dir: pathlib.Path) -> list[pathlib.Path]:
    """The ``*.trans.txt`` files of a subset directory, sorted."""
    return sorted(subset_dir.glob("*/*/*.trans.txt"))


def librispeech_chapters_without_transcript(
    subset_dir: pathlib.Path,
) -> list[MissingTranscriptError]:
    """An error for each ``<speaker>/<chapter>`` directory of a subset that holds files but not
    its ``<speaker>-<chapter>.trans.txt`` (its utterances would otherwise silently be lost)."""
    errors = []
    for chapter_dir in sorted(p for p in subset_dir.glob("*/*") if p.is_dir()):
        transcript = chapter_dir / f"{chapter_dir.parent.name}-{chapter_dir.name}.trans.txt"
        files = sorted(p.name for p in chapter_dir.iterdir() if p.is_file())
        if files and not transcript.is_file():
            errors.append(
                MissingTranscriptError(
                    chapter_dir,
                    len(files),
                    (
                        f"{chapter_dir} holds {len(files)} file(s) ({_some(files)}) but no "
                        f"{transcript.name}, so none of its utterances can be read. Restore the "
                        "transcript file or delete the directory. Expected layout:\n"
                        f"{LIBRISPEECH_LAYOUT}"
                    ),
                )
            )
    return errors


def iter_librispeech(root: str | pathlib.Path, subset: str) -> Iterator[UtteranceRecord]:
    """Lists the utterances of a LibriSpeech subset, in sorted order.

    Raises:
        LayoutError: the subset directory is missing or holds no transcript file.
    """
    subset_dir = find_librispeech_dir(root, subset)
    index_files = librispeech_index_files(subset_dir)
    if not index_files:
        raise LayoutError(
            f"{subset_dir} holds no <speaker>/<chapter>/*.trans.txt file. "
            f"Expected layout:\n{LIBRISPEECH_LAYOUT}"
        )
    speakers_txt = subset_dir.parent / "SPEAKERS.TXT"
    speakers = read_librispeech_speakers(speakers_txt) if speakers_txt.is_file() else {}
    for index_path in index_files:
        speaker_id = index_path.parent.parent.name
        gender = normalize_gender(speakers[speaker_id].sex if speaker_id in speakers else "")
        lines = index_path.read_text(encoding="utf-8").splitlines()
        for line_number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            utterance_id, _, text = line.strip().partition(" ")
            yield UtteranceRecord(
                utterance_id=utterance_id,
                user_id=speaker_id,
                audio_path=index_path.parent / f"{utterance_id}.flac",
                raw_transcript=text.strip(),
                index_path=index_path,
                line=line_number,
                gender=gender,
            )


# ---------------------------------------------------------------------------------------------
# Common Voice
# ---------------------------------------------------------------------------------------------


def find_common_voice_dir(root: str | pathlib.Path, language: str) -> pathlib.Path:
    """Returns the ``<lang>`` directory: ``<root>/<lang>`` or ``<root>/cv-corpus*/<lang>``."""
    root = pathlib.Path(root)
    candidates = [root / language] + sorted(root.glob(f"cv-corpus*/{language}"), reverse=True)
    for candidate in candidates:
        if (candidate / "clips").is_dir():
            return candidate
    raise LayoutError(
        f"Common Voice language {language!r} not found under {str(root)!r} "
        f"(no {language}/clips directory). Expected layout:\n{COMMON_VOICE_LAYOUT}"
    )


def _tsv_path(language_dir: pathlib.Path, split: str) -> pathlib.Path:
    path = language_dir / f"{split}.tsv"
    if not path.is_file():
        raise LayoutError(f"{path} is missing. Expected layout:\n{COMMON_VOICE_LAYOUT}")
    return path


def common_voice_index_files(
    language_dir: pathlib.Path, splits: tuple[str, ...] = COMMON_VOICE_SPLITS
) -> list[pathlib.Path]:
    """The ``<split>.tsv`` files of a language directory; LayoutError if one is missing."""
    return [_tsv_path(language_dir, split) for split in splits]


def iter_common_voice(
    root: str | pathlib.Path, language: str, split: str
) -> Iterator[UtteranceRecord]:
    """Lists the utterances of ``<lang>/<split>.tsv`` in file order.

    The tsv files are tab separated without quoting (a sentence may contain ``"``).

    Raises:
        LayoutError: the language directory or the tsv file is missing.
        SchemaError: the header lacks ``client_id``, ``path`` or ``sentence``.
    """
    language_dir = find_common_voice_dir(root, language)
    tsv_path = _tsv_path(language_dir, split)
    csv.field_size_limit(sys.maxsize)
    with tsv_path.open(encoding="utf-8", newline="") as stream:
        reader = csv.reader(stream, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, [])
        missing = [c for c in COMMON_VOICE_REQUIRED_COLUMNS if c not in header]
        if missing:
            raise SchemaError(
                f"{tsv_path}:1: header lacks column(s) {missing}; found {header}. "
                f"A Common Voice tsv starts with the header "
                f"{chr(9).join(COMMON_VOICE_COLUMNS)!r} (at least "
                f"{', '.join(COMMON_VOICE_REQUIRED_COLUMNS)})."
            )
        column = {name: i for i, name in enumerate(header)}
        for line_number, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) < len(header):
                row = row + [""] * (len(header) - len(row))
            clip = row[column["path"]]
            yield UtteranceRecord(
                utterance_id=pathlib.PurePath(clip).stem,
                user_id=row[column["client_id"]],
                audio_path=language_dir / "clips" / clip,
                raw_transcript=row[column["sentence"]].strip(),
                index_path=tsv_path,
                line=line_number,
                gender=normalize_gender(row[column["gender"]] if "gender" in column else ""),
            )


# ---------------------------------------------------------------------------------------------
# Shared
# ---------------------------------------------------------------------------------------------


def fingerprint_files(paths: list[pathlib.Path]) -> str:
    """sha256 over the names and contents of index files: changes when the corpus changes."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _some(names: list[str], limit: int = 3) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _check_other_format(path: pathlib.Path) -> None:
    """LayoutError if ``path`` is missing but the same name with other audio extensions is
    there (a corpus converted to another format)."""
    if path.exists():
        return
    extensions = {f".{f.lower()}" for f in soundfile.available_formats()}
    others = sorted(
        path.with_suffix(e).name
        for e in extensions
        if e != path.suffix and path.with_suffix(e).is_file()
    )
    if others:
        raise LayoutError(
            f"{path} is missing, but {', '.join(others)} is there: the corpus "
            f"index names {path.suffix} files. Convert the audio to "
            f"{path.suffix} (e.g. sox {others[0]} {path.name}), or list the "
            "files as they are in the index."
        )


def read_audio_16k(path: str | pathlib.Path) -> np.ndarray:
    """Decodes an audio file (FLAC, MP3, WAV, OGG, ...) to mono 16 kHz int16 ``[samples]``.

    The project's one decoder, :func:`fl_dp_asr.audio.io.load_audio`, with its checks; its
    errors become data errors naming the file. Files already at 16 kHz come back bit-exact;
    others are resampled with ``scipy.signal.resample_poly``; several channels are averaged.

    Raises:
        CorruptAudioError: the file is missing, a directory, unreadable, truncated (fewer
            samples decode than its header declares) or holds no samples.
        LayoutError: the file is missing but the same name with another audio extension is
            there (e.g. ``.wav`` files where LibriSpeech has ``.flac``).
    """
    path = pathlib.Path(path)
    _check_other_format(path)
    try:
        return audio_io.load_audio(path, SAMPLE_RATE)
    except audio_io.AudioFileError as error:
        raise CorruptAudioError(path, error.reason) from error
