"""TFDS builders ``librispeech_local`` and ``common_voice_local`` over local corpus directories.

Both read the official layouts (see :mod:`fl_dp_asr.data.layouts`) through ``manual_dir``
and write ``array_record`` files that are read back with random access, without TensorFlow
(``builder.as_data_source()``). One example per utterance:

==================  =========================  ==============================================
feature             type                       meaning
==================  =========================  ==============================================
``audio``           int16 ``[samples]``        16 kHz mono waveform (resampled if needed)
``transcript``      text (bytes when read)     normalized by ``fl_dp_asr.text.normalize``
``raw_transcript``  text                       as written in the corpus
``user_id``         text                       LibriSpeech speaker id / Common Voice client_id
``utterance_id``    text                       ``19-198-0000`` / clip name without extension
``duration``        float32                    seconds
``gender``          text                       ``female``/``male``/``other``/``""`` (unknown)
==================  =========================  ==============================================

TFDS 4.9.10 builds without TensorFlow with ``file_format="array_record"``, with two
workarounds: ``tfds.features.Audio`` calls ``tf.dtypes`` in its constructor, so audio is a
``tfds.features.Tensor(shape=(None,), dtype=np.int16)``; and ``code_path`` is overridden
(TFDS's default imports the ``importlib_resources`` backport, absent on Python 3.11).
The build writes into
an ``incomplete.*`` directory that TFDS renames only on success and deletes on failure, so a
failed build leaves nothing half-written.

Usage::

    from fl_dp_asr.data import load_split
    source = load_split("common_voice_local", "en", "train",
                        manual_dir="data/synthetic", data_dir="data/tfds")
    example = source[0]   # dict of numpy arrays / bytes
"""

from __future__ import annotations

import concurrent.futures
import logging
import pathlib
from collections.abc import Iterator
from typing import cast

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils

from fl_dp_asr.data import layouts
from fl_dp_asr.data.errors import (
    CorruptAudioError,
    DataError,
    EmptyTranscriptError,
    LayoutError,
    TranscriptError,
    UnsupportedCharactersError,
)
from fl_dp_asr.data.federated import FederatedDataset
from fl_dp_asr.text import normalize
from fl_dp_asr.text.tokenizer import Language

logger = logging.getLogger(__name__)

_DECODE_CHUNK = 64
_MAX_LISTED_SKIPS = 50


def _features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "audio": tfds.features.Tensor(
                shape=(None,), dtype=np.int16, doc="16 kHz mono waveform"
            ),
            "transcript": tfds.features.Text(doc="normalized transcript (fl_dp_asr.text)"),
            "raw_transcript": tfds.features.Text(doc="transcript as written in the corpus"),
            "user_id": tfds.features.Text(doc="speaker id / Common Voice client_id"),
            "utterance_id": tfds.features.Text(),
            "duration": tfds.features.Scalar(dtype=np.float32, doc="seconds"),
            "gender": tfds.features.Text(),
        }
    )


def _decode(path: pathlib.Path) -> np.ndarray | CorruptAudioError:
    try:
        return layouts.read_audio_16k(path)
    except CorruptAudioError as error:
        return error


class _LocalSpeechBuilder(
    tfds.core.GeneratorBasedBuilder,  # type: ignore[call-arg]
    skip_registration=True,
):
    """Shared build logic: index → validate transcript → decode audio → example.

    Args:
        skip_bad_files: False (default): the first corrupt or truncated audio file, empty
            transcript, transcript with characters outside the tokenizer's vocabulary or
            LibriSpeech chapter without its transcript file fails the build with
            :class:`CorruptAudioError` / :class:`TranscriptError` /
            :class:`MissingTranscriptError` naming the file (and line). True: such utterances
            are skipped and counted in ``info.metadata["skipped"]`` (per split and reason),
            the first few listed in ``info.metadata["skipped_files"]``; a split whose every
            utterance is skipped still fails (:class:`DataError`). Either way, a split whose
            index lists no utterance (an empty Common Voice ``test.tsv``) is not built and is
            named in ``info.metadata["empty_splits"]``.
        decode_workers: threads that decode and resample audio.
        **kwargs: passed to ``tfds.core.GeneratorBasedBuilder`` (``data_dir``, ``config``,
            ...); ``file_format`` defaults to ``"array_record"``.
    """

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "First release.",
        "1.1.0": "gender in one vocabulary (female, male, other, ''); empty splits are not "
        "built; truncated audio and LibriSpeech chapters without a transcript are "
        "bad files.",
    }

    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This module's path. TFDS's own lookup needs the ``importlib_resources`` backport
        on Python >= 3.9 (it is only declared for < 3.9), so it fails for a builder defined
        in an installed package."""
        return epath.Path(__file__)

    def __init__(self, *, skip_bad_files: bool = False, decode_workers: int = 4, **kwargs):
        self._skip_bad_files = skip_bad_files
        self._decode_workers = decode_workers
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    # Subclass hooks --------------------------------------------------------------------------
    def _language(self) -> Language:
        raise NotImplementedError

    def _index_files(self, manual_dir: pathlib.Path) -> list[pathlib.Path]:
        raise NotImplementedError

    def _records(self, manual_dir: pathlib.Path, split: str) -> list[layouts.UtteranceRecord]:
        raise NotImplementedError

    def _split_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _split_index(self, manual_dir: pathlib.Path, split: str) -> pathlib.Path:
        """The file or directory that lists ``split``'s utterances (for messages)."""
        raise NotImplementedError

    # -----------------------------------------------------------------------------------------
    def source_fingerprint(self, manual_dir: str | pathlib.Path) -> str:
        """Hash of the corpus index files this config reads (LayoutError if they are absent)."""
        return layouts.fingerprint_files(self._index_files(pathlib.Path(manual_dir)))

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=_features(),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        try:
            manual_dir = pathlib.Path(dl_manager.manual_dir)
        except AssertionError as error:  # TFDS: missing or empty, with our instructions.
            raise LayoutError(str(error)) from error
        self.info.metadata.update(
            {
                "source_fingerprint": self.source_fingerprint(manual_dir),
                "skip_bad_files": self._skip_bad_files,
                "skipped": {},
                "skipped_files": [],
                "empty_splits": {},
            }
        )
        generators = {}
        for split in self._split_names():
            self.info.metadata["skipped"][split] = {}
            records = self._records(manual_dir, split)
            if records:
                generators[split] = self._generate_examples(records, split)
            elif self.info.metadata["skipped"][split]:
                self._fail_all_skipped(split)
            else:
                self._set_aside_empty(split, self._split_index(manual_dir, split))
        if not generators:
            raise LayoutError(
                f"every split of {self.name}/{self.builder_config.name} in "
                f"{manual_dir} is empty: {self.info.metadata['empty_splits']}"
            )
        return generators

    def _set_aside_empty(self, split: str, index: pathlib.Path) -> None:
        """Records that ``split`` lists no utterance; the split is not built."""
        del self.info.metadata["skipped"][split]
        self.info.metadata["empty_splits"][split] = str(index)
        logger.warning(
            "%s lists no utterance: split %r of %s/%s is not built (the other splits are)",
            index,
            split,
            self.name,
            self.builder_config.name,
        )

    def _fail_all_skipped(self, split: str) -> None:
        """DataError: ``split`` would be empty because every utterance was skipped."""
        counts = self.info.metadata["skipped"][split]
        first = next(
            (
                m.removeprefix(f"[{split}] ")
                for m in self.info.metadata["skipped_files"]
                if m.startswith(f"[{split}] ")
            ),
            "see the warnings above",
        )
        raise DataError(
            f"every utterance of split {split!r} was skipped ({counts}); the first: {first}"
        )

    def _validated_transcript(self, record: layouts.UtteranceRecord) -> str:
        if not record.raw_transcript:
            raise EmptyTranscriptError(
                record.index_path, record.line, f"empty transcript for {record.utterance_id}"
            )
        normalized = normalize(record.raw_transcript, self._language())
        if normalized.dropped:
            raise UnsupportedCharactersError(
                record.index_path, record.line, normalized.dropped, record.raw_transcript
            )
        if not normalized.text:
            raise EmptyTranscriptError(
                record.index_path,
                record.line,
                f"transcript {record.raw_transcript!r} is empty after normalization",
            )
        return normalized.text

    def _skip(self, split: str, reason: str, error: DataError, count: int = 1) -> None:
        """Raises ``error``, or (``skip_bad_files``) counts ``count`` utterances as skipped."""
        if not self._skip_bad_files:
            raise error
        counts = self.info.metadata["skipped"][split]
        counts[reason] = counts.get(reason, 0) + count
        listed = self.info.metadata["skipped_files"]
        if len(listed) < _MAX_LISTED_SKIPS:
            listed.append(f"[{split}] {' '.join(str(error).split())}")
        logger.warning("skipping: %s", error)

    def _generate_examples(
        self, records: list[layouts.UtteranceRecord], split: str
    ) -> Iterator[tuple[str, dict]]:
        yielded = 0
        with concurrent.futures.ThreadPoolExecutor(self._decode_workers) as pool:
            for start in range(0, len(records), _DECODE_CHUNK):
                valid = []
                for record in records[start : start + _DECODE_CHUNK]:
                    try:
                        valid.append((record, self._validated_transcript(record)))
                    except TranscriptError as error:
                        reason = (
                            "empty_transcript"
                            if isinstance(error, EmptyTranscriptError)
                            else "unsupported_characters"
                        )
                        self._skip(split, reason, error)
                audios = pool.map(_decode, [record.audio_path for record, _ in valid])
                for (record, transcript), audio in zip(valid, audios):
                    if isinstance(audio, CorruptAudioError):
                        self._skip(split, "corrupt_audio", audio)
                        continue
                    yielded += 1
                    yield (
                        record.utterance_id,
                        {
                            "audio": audio,
                            "transcript": transcript,
                            "raw_transcript": record.raw_transcript,
                            "user_id": record.user_id,
                            "utterance_id": record.utterance_id,
                            "duration": np.float32(len(audio) / layouts.SAMPLE_RATE),
                            "gender": record.gender,
                        },
                    )
        if not yielded:  # before TFDS's raw "No examples were yielded"
            self._fail_all_skipped(split)


class LibrispeechLocal(_LocalSpeechBuilder):
    """LibriSpeech read from a local copy in the official layout; one config per subset.

    Each config has one split, named like the subset (``dev-clean`` has split ``dev-clean``).
    Users are speakers.
    """

    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=subset, description=f"LibriSpeech {subset}")
        for subset in layouts.LIBRISPEECH_SUBSETS
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Expected layout:\n{layouts.LIBRISPEECH_LAYOUT}"

    def _language(self) -> Language:
        return "en"

    def _split_names(self) -> tuple[str, ...]:
        return (self.builder_config.name,)

    def _index_files(self, manual_dir: pathlib.Path) -> list[pathlib.Path]:
        subset_dir = layouts.find_librispeech_dir(manual_dir, self.builder_config.name)
        speakers = subset_dir.parent / "SPEAKERS.TXT"
        return layouts.librispeech_index_files(subset_dir) + (
            [speakers] if speakers.is_file() else []
        )

    def _split_index(self, manual_dir: pathlib.Path, split: str) -> pathlib.Path:
        return layouts.find_librispeech_dir(manual_dir, split)

    def _records(self, manual_dir: pathlib.Path, split: str) -> list[layouts.UtteranceRecord]:
        subset_dir = layouts.find_librispeech_dir(manual_dir, split)
        for error in layouts.librispeech_chapters_without_transcript(subset_dir):
            self._skip(split, "missing_transcript", error, count=error.num_files)
        return list(layouts.iter_librispeech(manual_dir, split))


class CommonVoiceLocal(_LocalSpeechBuilder):
    """Common Voice read from a local copy in the official layout; one config per language.

    Splits ``train``, ``dev``, ``test`` from the official tsv files (speakers disjoint).
    Users are ``client_id``. French and German text is transliterated to ASCII.
    """

    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=language, description=f"Common Voice, language {language}")
        for language in ("en", "fr", "de")
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"Expected layout:\n{layouts.COMMON_VOICE_LAYOUT}"

    def _language(self) -> Language:
        return self.builder_config.name

    def _split_names(self) -> tuple[str, ...]:
        return layouts.COMMON_VOICE_SPLITS

    def _index_files(self, manual_dir: pathlib.Path) -> list[pathlib.Path]:
        language_dir = layouts.find_common_voice_dir(manual_dir, self.builder_config.name)
        return layouts.common_voice_index_files(language_dir)

    def _split_index(self, manual_dir: pathlib.Path, split: str) -> pathlib.Path:
        language_dir = layouts.find_common_voice_dir(manual_dir, self.builder_config.name)
        return layouts.common_voice_index_files(language_dir, (split,))[0]

    def _records(self, manual_dir: pathlib.Path, split: str) -> list[layouts.UtteranceRecord]:
        return list(layouts.iter_common_voice(manual_dir, self.builder_config.name, split))


BUILDERS: dict[str, type[_LocalSpeechBuilder]] = {
    "librispeech_local": LibrispeechLocal,
    "common_voice_local": CommonVoiceLocal,
}


def get_builder(
    name: str,
    config: str,
    *,
    data_dir: str | pathlib.Path | None = None,
    skip_bad_files: bool = False,
) -> _LocalSpeechBuilder:
    """Instantiates builder ``name`` (``librispeech_local`` / ``common_voice_local``)."""
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(BUILDERS)}")
    configs = [c.name for c in BUILDERS[name].BUILDER_CONFIGS]
    if config not in configs:
        raise ValueError(f"unknown config {config!r} of {name}; choose one of {configs}")
    return BUILDERS[name](
        config=config,
        data_dir=None if data_dir is None else str(data_dir),
        skip_bad_files=skip_bad_files,
    )


def prepare(
    name: str,
    config: str,
    *,
    manual_dir: str | pathlib.Path | None,
    data_dir: str | pathlib.Path | None = None,
    skip_bad_files: bool = False,
    rebuild_if_stale: bool = True,
) -> _LocalSpeechBuilder:
    """Builds the dataset unless it is already built from the same corpus; returns the builder.

    Args:
        name: ``"librispeech_local"`` or ``"common_voice_local"``.
        config: LibriSpeech subset (``"train-clean-100"``, ...) or Common Voice language.
        manual_dir: the corpus directory (see the layouts in :mod:`fl_dp_asr.data.layouts`).
            May be None when the dataset is already built.
        data_dir: where TFDS writes (default: TFDS's, ``~/tensorflow_datasets``).
        skip_bad_files: see :class:`_LocalSpeechBuilder`.
        rebuild_if_stale: if the built dataset was made from a corpus whose index files
            (``*.trans.txt`` / ``*.tsv``) differ from those in ``manual_dir`` now, rebuild it.

    Raises:
        LayoutError: the dataset is not built and ``manual_dir`` is missing or malformed.
        CorruptAudioError, TranscriptError: bad input and ``skip_bad_files=False``.
    """
    builder = get_builder(name, config, data_dir=data_dir, skip_bad_files=skip_bad_files)
    manual_exists = manual_dir is not None and pathlib.Path(manual_dir).is_dir()
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if builder.is_prepared():
        built_from = builder.info.metadata.get("source_fingerprint")
        source = cast("str | pathlib.Path", manual_dir)  # not None where manual_exists
        if (
            not (manual_exists and rebuild_if_stale)
            or builder.source_fingerprint(source) == built_from
        ):
            _report_skipped(builder, skip_bad_files)
            return builder
        logger.warning(
            "%s/%s in %s was built from another version of %s; rebuilding.",
            name,
            config,
            builder.data_dir,
            manual_dir,
        )
        mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    if not manual_exists:
        raise LayoutError(
            f"{name}/{config} is not built in {builder.data_dir} and "
            f"manual_dir {str(manual_dir)!r} is not a directory. "
            f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir), download_mode=mode)
    )
    return get_builder(name, config, data_dir=data_dir, skip_bad_files=skip_bad_files)


def _report_skipped(builder: _LocalSpeechBuilder, skip_bad_files: bool) -> None:
    """Logs (a warning for a caller that does not skip) what a reused dataset lacks."""
    skipped = builder.info.metadata.get("skipped", {})
    total = sum(n for reasons in skipped.values() for n in reasons.values())
    if not total:
        return
    log = logger.info if skip_bad_files else logger.warning
    log(
        "%s/%s in %s was prepared with skip_bad_files=True and lacks %d skipped utterance(s) "
        "(%s), the first: %s. To include them, fix those files and delete %s (it is rebuilt "
        "on next use).",
        builder.name,
        builder.builder_config.name,
        builder.data_dir,
        total,
        "; ".join(
            f"{split}: " + ", ".join(f"{n} {reason}" for reason, n in reasons.items())
            for split, reasons in skipped.items()
            if reasons
        ),
        builder.info.metadata["skipped_files"][0],
        builder.data_dir,
    )


def _resolve_split(builder: _LocalSpeechBuilder, split: str | None) -> str:
    splits = list(builder.info.splits.keys())
    empty = builder.info.metadata.get("empty_splits", {})
    if split is None:
        if len(splits) != 1:
            raise ValueError(
                f"{builder.name}/{builder.builder_config.name} has splits {splits}: name one"
            )
        return splits[0]
    if split in empty:
        raise DataError(
            f"split {split!r} of {builder.name}/{builder.builder_config.name} is "
            f"empty: {empty[split]} lists no utterance; use one of {splits}"
        )
    if split not in splits:
        raise ValueError(
            f"{builder.name}/{builder.builder_config.name} has no split {split!r}; it has {splits}"
        )
    return split


def load_split(
    name: str,
    config: str,
    split: str | None = None,
    *,
    manual_dir: str | pathlib.Path | None = None,
    data_dir: str | pathlib.Path | None = None,
    skip_bad_files: bool = False,
):
    """Random-access data source of one split, building the dataset first if needed.

    Args:
        name, config, manual_dir, data_dir, skip_bad_files: see :func:`prepare`.
        split: ``"train"``/``"dev"``/``"test"`` for Common Voice; for LibriSpeech the subset
            name (the only split, also chosen by None).

    Returns:
        A TFDS ``ArrayRecordDataSource``: ``len(source)``, ``source[i]`` → dict with numpy
        ``audio`` (int16) and bytes for the text features. No TensorFlow needed.
    """
    builder = prepare(
        name, config, manual_dir=manual_dir, data_dir=data_dir, skip_bad_files=skip_bad_files
    )
    return builder.as_data_source(split=_resolve_split(builder, split))


def load_federated(
    name: str,
    config: str,
    split: str | None = None,
    *,
    manual_dir: str | pathlib.Path | None = None,
    data_dir: str | pathlib.Path | None = None,
    skip_bad_files: bool = False,
    progress: bool = True,
) -> FederatedDataset:
    """:func:`load_split` grouped by user, as a :class:`FederatedDataset`.

    The first call reads the split once to index users and lengths, and caches the index as
    ``federated_index-<split>.npz`` in the built dataset's directory.
    """
    builder = prepare(
        name, config, manual_dir=manual_dir, data_dir=data_dir, skip_bad_files=skip_bad_files
    )
    split = _resolve_split(builder, split)
    cache_path = pathlib.Path(builder.data_dir) / f"federated_index-{split}.npz"
    return FederatedDataset.from_source(
        builder.as_data_source(split=split), cache_path=cache_path, progress=progress
    )
