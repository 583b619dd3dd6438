"""Canary utterances: random texts spoken by espeak-ng, sped up, put into users' data.

The memorization audit of Wang, Thakkar, Mathews (arXiv 2310.11739, after Carlini et al.'s
Secret Sharer, arXiv 1802.08232): canaries are utterances of random text that ordinary speech
does not teach the model; each *inserted* canary is added ``r`` times to one chosen training
user's data, *held-out* canaries of the same kind are never inserted. After training, a model
that transcribes the inserted ones much better than the held-out ones has memorized them.

* Text (:func:`random_texts`): ``words`` words of ``letters`` characters each, never a word
  of the corpus vocabulary: random letters (``kind="letters"``, ``"qzbe vkxi"``: espeak-ng
  spells what it cannot pronounce, so the audio of a word is a run of letter names) or
  consonant-vowel syllables (``kind="syllables"``, ``"bako miru"``: pronounceable pseudo-words).
  Every text has the same length (``words · (letters + 1) − 1`` characters). Letters are the
  default: the demo's seed model, which never heard a canary, transcribes pseudo-words at
  2x with ~45 % CER but random letters with ~70 % (measured on 4 canaries): the held-out
  canaries' CER is the ceiling of what memorization can show.
* Audio (:func:`synthesize`): one canary voice per call of :func:`make_canaries` (a
  :class:`~fl_dp_asr.data.synthetic.Voice` drawn from the seed like a speaker of the corpus
  part whose format is asked: LibriSpeech for ``flac``, Common Voice for ``mp3``; its speed
  fixed at :data:`BASE_WPM`). The speed-up is espeak-ng's own rate, a pitch-preserving
  tempo change (espeak-ng synthesizes at the rate below 450 wpm and time-stretches with sonic
  above; no other dependency): :func:`espeak_rate` finds the rate at which a reference text
  is ``speedup`` times shorter (``BASE_WPM · speedup`` itself would be 10-30 % too fast below
  450 wpm). espeak-ng's silence before and after the speech does not shrink with the rate
  either, so it is cut and :data:`EDGE_SECONDS` / ``speedup`` of silence is kept at each
  end: the clip is about ``speedup`` times shorter than at 1x. The clip then goes
  through the corpus's channel (noise, band limit), is written in the corpus's format (FLAC
  16 kHz or MP3 48 kHz, :func:`fl_dp_asr.data.synthetic.write_clip`) and decoded back with
  :func:`fl_dp_asr.data.layouts.read_audio_16k`, the path every corpus utterance takes.
* Insertion (:func:`insert`): a new :class:`~fl_dp_asr.data.FederatedDataset` whose source
  serves the canary audio after the original examples; an inserted canary appears
  ``repeats`` times in its user's rows (utterance ids ``f"{canary_id}-{j}"``).

Everything is a pure function of the spec and the training users (same spec, same users →
the same texts, users and audio bytes).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from fl_dp_asr.data import synthetic
from fl_dp_asr.data.federated import FederatedDataset
from fl_dp_asr.data.layouts import SAMPLE_RATE, read_audio_16k
from fl_dp_asr.data.stats import CANARY_PREFIX
from fl_dp_asr.text.tokenizer import CharTokenizer

#: Letters of the pseudo-words: consonants espeak-ng says one way, the five vowels.
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
TEXT_KINDS = ("letters", "syllables")
#: espeak-ng rate of the canary voice before the speed-up (words per minute; the corpus
#: speakers read at 120-200).
BASE_WPM = 160
#: What :func:`espeak_rate` times (pseudo-words of the default format).
CALIBRATION_TEXT = "tepa naga fito ruvo kemu dalo"
#: Silence kept before and after the speech at speed-up 1 (seconds; divided by the speed-up).
EDGE_SECONDS = 0.1
#: Samples below this fraction of the peak count as espeak-ng's silence.
_SILENCE = 0.01
#: audio format → (sample rate of the written clip in Hz, the corpus part whose voices it has).
AUDIO_FORMATS: dict[str, tuple[int, synthetic.DomainSpec]] = {
    "flac": (synthetic.LS_RATE, synthetic.LIBRISPEECH_DOMAIN),
    "mp3": (synthetic.CorpusConfig().cv_sample_rate, synthetic.COMMON_VOICE_DOMAIN),
}
_FIELD = "config.audit.utterances"


@dataclasses.dataclass(frozen=True)
class UtteranceCanarySpec:
    """Which canary utterances to make (``config.audit.utterances``).

    Attributes:
        per_repeat: n, inserted canaries per repetition count.
        repeats: the repetition counts r (each > 0, distinct): a canary of count r is in
            its user's data r times.
        users: k, training users that receive the inserted canaries, dealt round robin
            (canary i goes to chosen user i mod k); None: one user per inserted canary.
        heldout: canaries drawn the same way but never inserted; None: as many as inserted.
        kind: ``"letters"`` (random letters a-z) or ``"syllables"`` (consonant-vowel
            pseudo-words).
        words: words per canary text.
        letters: characters per word (even for ``"syllables"``).
        speedup: tempo factor (> 1) of the canary speech over :data:`BASE_WPM`.
        seed: fixes texts, voice, users and noise.
    """

    per_repeat: int = 4
    repeats: tuple[int, ...] = (1, 4, 16)
    users: int | None = None
    heldout: int | None = None
    kind: str = "letters"
    words: int = 2
    letters: int = 4
    # Measured (seed 0: voice en-gb+f3 for flac, en-gb-x-gbclan+f2 for mp3) on the 24 default
    # texts of 9 characters (random letters): at 2x 7-21 characters/s, >= 1.43x the frames of
    # 30 ms CTC needs; at 3x the fastest has 0.93x (flac), at the paper's 4x 0.69x
    # (19-43 characters/s): the char-level CTC model (33 frames/s) could not emit such a
    # canary at all, whatever it memorized. (Pseudo-words, kind="syllables": 13-25 frames
    # for 9 labels at 2x, 6.4 frames at 4x.)
    speedup: float = 2.0
    seed: int = 0

    @property
    def num_inserted(self) -> int:
        """Inserted canaries: ``per_repeat · len(repeats)``."""
        return self.per_repeat * len(self.repeats)

    @property
    def num_heldout(self) -> int:
        """Held-out canaries (``heldout``, or as many as inserted)."""
        return self.num_inserted if self.heldout is None else self.heldout

    @property
    def num_users(self) -> int:
        """k, users that receive canaries (``users``, or one per inserted canary)."""
        return self.num_inserted if self.users is None else self.users

    def check(self, num_users: int | None = None) -> None:
        """ValueError naming the field when a setting is unusable.

        Args:
            num_users: training users available (None: not checked against them).
        """
        if self.per_repeat < 1:
            raise ValueError(f"{_FIELD}.per_repeat={self.per_repeat} must be >= 1")
        if not self.repeats or any(r <= 0 for r in self.repeats):
            raise ValueError(
                f"{_FIELD}.repeats={self.repeats} must be repetition counts > 0, e.g. (1, 4, 16)"
            )
        if len(set(self.repeats)) != len(self.repeats):
            raise ValueError(f"{_FIELD}.repeats={self.repeats} must be distinct")
        if not self.speedup > 1:
            raise ValueError(
                f"{_FIELD}.speedup={self.speedup} must be > 1: canaries are sped up so that "
                "ordinary speech does not teach the model to transcribe them"
            )
        if self.kind not in TEXT_KINDS:
            raise ValueError(f"{_FIELD}.kind={self.kind!r}: choose one of {TEXT_KINDS}")
        if self.words < 1 or self.letters < 1:
            raise ValueError(
                f"{_FIELD}.words={self.words} and {_FIELD}.letters={self.letters} must be >= 1"
            )
        if self.kind == "syllables" and self.letters % 2:
            raise ValueError(
                f"{_FIELD}.letters={self.letters} must be even for kind='syllables' "
                "(consonant-vowel pairs)"
            )
        if self.heldout is not None and self.heldout < 0:
            raise ValueError(f"{_FIELD}.heldout={self.heldout} must be >= 0 (or None)")
        if self.users is not None and self.users < 1:
            raise ValueError(f"{_FIELD}.users={self.users} must be >= 1 (or None)")
        if self.num_users > self.num_inserted:
            raise ValueError(
                f"{_FIELD}.users={self.users} exceeds the {self.num_inserted} inserted "
                f"canaries (per_repeat {self.per_repeat} x {len(self.repeats)} repeats); "
                f"set users <= {self.num_inserted}"
            )
        if num_users is not None and self.num_users > num_users:
            given = (
                f"users={self.users}"
                if self.users is not None
                else f"users=None (one user per inserted canary: {self.num_users})"
            )
            raise ValueError(
                f"{_FIELD}.{given} exceeds the {num_users} training users; set "
                f"{_FIELD}.users to at most {num_users}"
            )


@dataclasses.dataclass(frozen=True, eq=False)
class UtteranceCanary:
    """One canary utterance.

    Attributes:
        canary_id: ``canary-r16-002`` (inserted, 16 repetitions), ``canary-heldout-005``.
        text: the transcript (normalized: lowercase pseudo-words and spaces).
        repeats: how often it is in its user's data; 0 for held-out canaries.
        user: the training user holding it; None for held-out canaries.
        audio: int16 [samples] at 16 kHz, after the corpus's codec.
    """

    canary_id: str
    text: str
    repeats: int
    user: str | None
    audio: np.ndarray

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UtteranceCanary):
            return NotImplemented
        return (self.canary_id, self.text, self.repeats, self.user) == (
            other.canary_id,
            other.text,
            other.repeats,
            other.user,
        ) and np.array_equal(self.audio, other.audio)

    __hash__ = None  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------
# Texts
# ---------------------------------------------------------------------------------------------
def random_texts(
    spec: UtteranceCanarySpec, rng: np.random.Generator, count: int, exclude: set[str]
) -> list[str]:
    """``count`` distinct texts of ``spec.words`` words of ``spec.letters`` characters (random
    :data:`LETTERS`, or :data:`CONSONANTS`-then-:data:`VOWELS` syllables: ``spec.kind``), none
    with a word in ``exclude``.

    Args:
        spec: the text format (``kind``, ``words``, ``letters``).
        rng: draws the texts (the same generator state gives the same texts).
        count: how many.
        exclude: words no text may contain (the corpus vocabulary).

    Raises:
        ValueError: the format has too few distinct texts for ``count``.

    >>> random_texts(UtteranceCanarySpec(), np.random.default_rng(0), 2, set())
    ['wqnh ibba', 'evqx npzs']
    >>> random_texts(UtteranceCanarySpec(kind="syllables"), np.random.default_rng(0), 2, set())
    ['tepa naga', 'fito ruvo']
    """
    syllables = spec.kind == "syllables"
    units = spec.letters // 2 if syllables else spec.letters
    per_unit = len(CONSONANTS) * len(VOWELS) if syllables else len(LETTERS)
    capacity = per_unit ** (spec.words * units)
    if count > capacity // 2:
        raise ValueError(
            f"{count} canary texts of {spec.words} word(s) of {spec.letters} letters "
            f"({spec.kind}) would be too many of the {capacity} possible: raise "
            f"{_FIELD}.words or {_FIELD}.letters"
        )

    def draw_word(row: np.ndarray, other: np.ndarray) -> str:
        if syllables:
            return "".join(CONSONANTS[c] + VOWELS[v] for c, v in zip(row, other))
        return "".join(LETTERS[c] for c in row)

    texts: list[str] = []
    seen: set[str] = set()
    for _ in range(100 * count + 1000):
        if len(texts) == count:
            break
        if syllables:
            first = rng.integers(len(CONSONANTS), size=(spec.words, units))
            second = rng.integers(len(VOWELS), size=(spec.words, units))
        else:
            first = rng.integers(len(LETTERS), size=(spec.words, units))
            second = first
        words = [draw_word(a, b) for a, b in zip(first, second)]
        text = " ".join(words)
        if text not in seen and not exclude.intersection(words):
            seen.add(text)
            texts.append(text)
    if len(texts) < count:
        raise ValueError(
            f"drew only {len(texts)} of {count} canary texts outside the corpus vocabulary: "
            f"raise {_FIELD}.words or {_FIELD}.letters"
        )
    return texts


# ---------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------
def _check_format(audio_format: str) -> None:
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(
            f"audio_format={audio_format!r} is not one of {sorted(AUDIO_FORMATS)} "
            "('flac': LibriSpeech layout, 'mp3': Common Voice layout)"
        )


def canary_voice(seed: int, audio_format: str) -> synthetic.Voice:
    """The one canary voice: a speaker of the corpus part written in ``audio_format``, drawn
    from ``seed``, at :data:`BASE_WPM`."""
    _check_format(audio_format)
    _, domain = AUDIO_FORMATS[audio_format]
    rng = np.random.default_rng([seed, 1])
    return synthetic.Voice(
        accent=str(rng.choice(domain.accents)),
        variant=str(rng.choice(domain.variants)),
        speed=BASE_WPM,
        pitch=int(rng.integers(domain.pitch[0], domain.pitch[1] + 1)),
        amplitude=int(rng.integers(domain.amplitude[0], domain.amplitude[1] + 1)),
        word_gap=int(rng.integers(domain.word_gap[0], domain.word_gap[1] + 1)),
        snr_db=float(rng.uniform(*domain.snr_db)),
        lowpass_hz=(
            float(rng.uniform(*domain.lowpass_hz))
            if rng.random() < domain.lowpass_probability
            else 0.0
        ),
    )


def _trim(audio: np.ndarray, edge: int) -> np.ndarray:
    """The speech of float ``audio`` with ``edge`` samples of silence at each end."""
    loud = np.flatnonzero(np.abs(audio) > _SILENCE * np.abs(audio).max(initial=0.0))
    if loud.size == 0:
        return audio
    return np.pad(audio[loud[0] : loud[-1] + 1], edge)


@functools.lru_cache(maxsize=64)
def espeak_rate(voice: synthetic.Voice, speedup: float) -> int:
    """The espeak-ng rate (wpm) that speaks :data:`CALIBRATION_TEXT` ``speedup`` times
    faster than ``voice.speed`` does (speech without the edge silence, closest integer rate).

    Above 450 wpm espeak-ng time-stretches with sonic and ``voice.speed · speedup`` is
    within a few per cent; below, its own rate rule shortens short texts more than the
    rate says (measured: 2.2-2.6x shorter at 2x the rate), hence the search.
    """

    def seconds(rate: int) -> float:
        speech = synthetic.espeak(CALIBRATION_TEXT, dataclasses.replace(voice, speed=rate))
        return len(_trim(speech, 0)) / synthetic.ESPEAK_RATE

    target = seconds(voice.speed) / speedup
    low, high = voice.speed, round(2 * voice.speed * speedup)  # seconds(low) > target
    while high - low > 1:  # seconds(high) <= target
        middle = (low + high) // 2
        low, high = (low, middle) if seconds(middle) <= target else (middle, high)
    return low if abs(seconds(low) - target) < abs(seconds(high) - target) else high


def synthesize(
    text: str, voice: synthetic.Voice, *, speedup: float, audio_format: str, seed: int
) -> np.ndarray:
    """``text`` spoken by ``voice`` ``speedup`` times faster, through the corpus's codec.

    Args:
        text: what to say.
        voice: the speaker (its ``speed`` is the rate before the speed-up, wpm).
        speedup: tempo factor (1 = the voice's rate); espeak-ng speaks at
            :func:`espeak_rate`, and :data:`EDGE_SECONDS` / ``speedup`` of silence is kept
            at each end of the speech.
        audio_format: ``"flac"`` (16 kHz, LibriSpeech) or ``"mp3"`` (48 kHz, Common Voice).
        seed: the channel noise.

    Returns:
        int16 [samples] at 16 kHz, as :func:`fl_dp_asr.data.layouts.read_audio_16k` decodes
        the written clip.
    """
    _check_format(audio_format)
    sample_rate, _ = AUDIO_FORMATS[audio_format]
    rate = voice.speed if speedup == 1 else espeak_rate(voice, speedup)
    speech = _trim(
        synthetic.espeak(text, dataclasses.replace(voice, speed=rate)),
        round(EDGE_SECONDS * synthetic.ESPEAK_RATE / speedup),
    )
    clip = synthetic.channel(speech, voice, sample_rate, seed)
    with tempfile.TemporaryDirectory(prefix="canary-") as directory:
        path = pathlib.Path(directory) / f"canary.{audio_format}"
        synthetic.write_clip(path, clip, sample_rate)
        return read_audio_16k(path)


# ---------------------------------------------------------------------------------------------
# Canaries
# ---------------------------------------------------------------------------------------------
def _check_users(train: FederatedDataset) -> None:
    if "" in train.users:
        rows = len(train.rows_of(""))
        raise ValueError(
            f"{rows} training utterance(s) have an empty user id: canary utterances "
            f"({_FIELD}) need per-user data; use a corpus whose speaker / client ids are "
            "all given, or drop those utterances"
        )
    if train.num_users < 2:
        raise ValueError(
            f"the training split has {train.num_users} user(s) ({train.users}): canary "
            f"utterances ({_FIELD}) need per-user data, e.g. a corpus whose speaker / "
            "client ids are missing puts every utterance under one user; use a corpus with "
            "speaker ids (LibriSpeech) or client ids (Common Voice), or remove "
            f"{_FIELD}"
        )


def corpus_vocabulary(train: FederatedDataset) -> set[str]:
    """The words of ``train``'s transcripts: what no canary text may contain."""
    return {word for transcript in train.transcripts for word in transcript.split()}


def make_canaries(
    spec: UtteranceCanarySpec,
    train: FederatedDataset,
    *,
    audio_format: str,
    vocabulary: set[str] | None = None,
) -> list[UtteranceCanary]:
    """The inserted canaries (by repetition count, then index) and then the held-out ones.

    Args:
        spec: what to make.
        train: the federated training split (its users receive canaries; its transcripts'
            words are excluded from the texts).
        audio_format: the corpus's codec, ``"flac"`` (LibriSpeech layout) or ``"mp3"``
            (Common Voice layout).
        vocabulary: :func:`corpus_vocabulary` of ``train`` when the caller has it (None:
            computed here).

    Returns:
        ``spec.num_inserted`` canaries ``canary-r{r}-{i:03d}`` with their users, then
        ``spec.num_heldout`` canaries ``canary-heldout-{i:03d}`` (``repeats`` 0, ``user``
        None). The same for the same spec and training users.

    Raises:
        ValueError: a bad spec (:meth:`UtteranceCanarySpec.check`), users that cannot be
            identified (an empty user id, a single user), an unknown ``audio_format``.
    """
    _check_format(audio_format)
    spec.check(train.num_users)
    _check_users(train)
    if vocabulary is None:
        vocabulary = corpus_vocabulary(train)
    texts = random_texts(
        spec,
        np.random.default_rng([spec.seed, 0]),
        spec.num_inserted + spec.num_heldout,
        vocabulary,
    )
    voice = canary_voice(spec.seed, audio_format)
    users = [str(u) for u in np.random.default_rng([spec.seed, 2]).permutation(train.users)]
    chosen = users[: spec.num_users]
    labels: list[tuple[str, int, str | None]] = [
        (f"{CANARY_PREFIX}r{r}-{i:03d}", r, chosen[(n * spec.per_repeat + i) % len(chosen)])
        for n, r in enumerate(spec.repeats)
        for i in range(spec.per_repeat)
    ]
    labels += [(f"{CANARY_PREFIX}heldout-{i:03d}", 0, None) for i in range(spec.num_heldout)]
    canaries = []
    for index, ((canary_id, repeats, user), text) in enumerate(zip(labels, texts)):
        noise_seed = int(np.random.default_rng([spec.seed, 3, index]).integers(2**31))
        audio = synthesize(
            text, voice, speedup=spec.speedup, audio_format=audio_format, seed=noise_seed
        )
        audio.flags.writeable = False
        canaries.append(UtteranceCanary(canary_id, text, repeats, user, audio))
    return canaries


class CanarySource:
    """Random access to ``base``'s examples, then ``extra``'s (a data source for
    :class:`~fl_dp_asr.data.FederatedDataset`)."""

    def __init__(self, base: Any, extra: Sequence[dict[str, Any]]):
        self.base = base
        self.extra = list(extra)

    def __len__(self) -> int:
        return len(self.base) + len(self.extra)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"example {index} outside [0, {len(self)})")
        base = len(self.base)
        return self.base[index] if index < base else self.extra[index - base]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        base = len(self.base)
        own = [int(i) for i in indices if int(i) < base]
        read = (
            self.base.__getitems__(own)
            if hasattr(self.base, "__getitems__")
            else [self.base[i] for i in own]
        )
        from_base = iter(read)
        return [next(from_base) if int(i) < base else self[int(i)] for i in indices]


def insert(train: FederatedDataset, canaries: Sequence[UtteranceCanary]) -> FederatedDataset:
    """``train`` with every inserted canary ``repeats`` times in its user's data.

    The new rows follow the original ones (whose rows, order, users and audio are unchanged),
    with utterance ids ``f"{canary_id}-{j}"``, ``j < repeats``, the canary text as transcript
    and an unknown gender; the source serves their audio after the original examples.
    Held-out canaries (``repeats`` 0) are not inserted.

    Raises:
        ValueError: a canary's user is not a training user, or two canaries share an id.
    """
    inserted = [c for c in canaries if c.repeats > 0]
    ids = [c.canary_id for c in canaries]
    if len(set(ids)) != len(ids):
        raise ValueError(f"canary ids repeat: {sorted(i for i in set(ids) if ids.count(i) > 1)}")
    users = set(train.users)
    for canary in inserted:
        if canary.user not in users:
            raise ValueError(
                f"{canary.canary_id} belongs to user {canary.user!r}, who is not in the "
                f"training data ({train.num_users} users): make the canaries from this split"
            )
    rows = [
        (canary, f"{canary.canary_id}-{j}") for canary in inserted for j in range(canary.repeats)
    ]
    examples = [  # text as bytes, like the TFDS sources
        {
            "audio": canary.audio,
            "user_id": str(canary.user).encode(),
            "utterance_id": utterance_id.encode(),
            "transcript": canary.text.encode(),
            "gender": b"",
        }
        for canary, utterance_id in rows
    ]
    first = len(train.source)
    return FederatedDataset(
        CanarySource(train.source, examples),
        source_indices=np.concatenate(
            [train.source_indices, first + np.arange(len(rows), dtype=np.int64)]
        ),
        user_ids=train.user_of_row + [str(canary.user) for canary, _ in rows],
        utterance_ids=train.utterance_ids + [utterance_id for _, utterance_id in rows],
        transcripts=train.transcripts + [canary.text for canary, _ in rows],
        num_samples=np.concatenate(
            [train.num_samples, np.asarray([len(c.audio) for c, _ in rows], np.int64)]
        ),
        genders=train.genders + [""] * len(rows),
    )


# ---------------------------------------------------------------------------------------------
# Checks and manifest
# ---------------------------------------------------------------------------------------------
def ctc_frames_needed(label: np.ndarray) -> int:
    """Encoder frames CTC needs for int ``label`` [N]: N plus one per repeated adjacent pair."""
    label = np.asarray(label)
    return int(len(label) + np.sum(label[1:] == label[:-1]))


def check_transcribable(
    canaries: Sequence[UtteranceCanary], frame_seconds: float, tokenizer: CharTokenizer
) -> None:
    """ValueError when a canary is too short for CTC to emit its text.

    Args:
        canaries: the canaries.
        frame_seconds: duration of one encoder output frame (``ModelConfig.frame_seconds``).
        tokenizer: gives the labels (``encode(text)`` → int [N]).

    Raises:
        ValueError: some canary has fewer encoder frames (``seconds / frame_seconds``) than
            :func:`ctc_frames_needed`; the message names ``speedup`` and the numbers.
    """
    short = []
    for canary in canaries:
        frames = canary.seconds / frame_seconds
        needed = ctc_frames_needed(tokenizer.encode(canary.text))
        if frames < needed:
            short.append(
                f"{canary.canary_id} {canary.text!r}: {canary.seconds:.3f} s = {frames:.1f} "
                f"frames of {frame_seconds * 1000:g} ms < {needed} needed "
                f"({len(canary.text) / canary.seconds:.0f} characters/s)"
            )
    if short:
        raise ValueError(
            f"{len(short)} of {len(canaries)} canary utterances are too fast for the model to "
            f"transcribe at all: {'; '.join(short[:3])}{' ...' if len(short) > 3 else ''}. "
            f"Lower {_FIELD}.speedup (or shorten the texts: {_FIELD}.words, "
            f"{_FIELD}.letters)."
        )


def write_manifest(path: str | os.PathLike[str], canaries: Sequence[UtteranceCanary]) -> None:
    """Writes ``[{id, text, repeats, user, seconds}, ...]`` as JSON to ``path`` (atomically)."""
    path = pathlib.Path(path)
    entries = [
        {
            "id": c.canary_id,
            "text": c.text,
            "repeats": c.repeats,
            "user": c.user,
            "seconds": round(c.seconds, 4),
        }
        for c in canaries
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)
