"""Exceptions of the data package: every message says what was wrong, where, and what to do."""

from __future__ import annotations

import os

_SKIP_HINT = (
    "skip such utterances: prepare the dataset with skip_bad_files=True (on the command "
    "line: the trainers' --config.data.skip_bad_files=True, or python -m "
    "fl_dp_asr.data.stats ... --skip-bad-files) and they are counted in its metadata"
)


class DataError(Exception):
    """Base class of every error raised by `fl_dp_asr.data`."""


class LayoutError(DataError):
    """A corpus directory or index file is missing; the message shows the expected layout."""


class MissingTranscriptError(LayoutError):
    """A LibriSpeech chapter directory holds files but not its ``*.trans.txt``.

    Attributes:
        directory: the chapter directory.
        num_files: the files in it (the utterances that cannot be read).
    """

    def __init__(self, directory: str | os.PathLike[str], num_files: int, message: str):
        self.directory = str(directory)
        self.num_files = num_files
        super().__init__(message)


class SchemaError(DataError):
    """An index file (e.g. a Common Voice ``.tsv``) lacks required columns."""


class CorruptAudioError(DataError):
    """An audio file cannot be read, or decodes to no samples.

    Attributes:
        path: the audio file.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = str(path)
        super().__init__(
            f"{self.path}: unreadable or corrupt audio ({reason}). Replace or "
            f"delete the file, or {_SKIP_HINT}."
        )


class TranscriptError(DataError):
    """A transcript is empty or holds characters the tokenizer cannot represent.

    Attributes:
        path: the transcript or index file.
        line: 1-based line number in ``path``.
    """

    def __init__(self, path: str | os.PathLike[str], line: int, problem: str):
        self.path = str(path)
        self.line = line
        super().__init__(f"{self.path}:{line}: {problem}. Fix the line, or {_SKIP_HINT}.")


class EmptyTranscriptError(TranscriptError):
    """The transcript is empty, or empty after normalization."""


class UnsupportedCharactersError(TranscriptError):
    """The transcript holds characters that the character tokenizer cannot represent.

    Attributes:
        characters: the offending characters, in order of appearance.
    """

    def __init__(self, path: str | os.PathLike[str], line: int, characters: str, text: str):
        self.characters = characters
        super().__init__(
            path,
            line,
            f"characters {characters!r} in {text!r} cannot be "
            "represented by the tokenizer (fl_dp_asr.text vocabulary)",
        )


class CohortPackingError(DataError):
    """A cohort cannot be packed (unknown user, utterance longer than every bucket, ...)."""
