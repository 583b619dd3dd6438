"""Synthetic speech corpus in the official LibriSpeech and Common Voice layouts (espeak-ng).

The project's embedded default dataset: many distinct synthetic speakers (espeak-ng voice
variant, accent, pitch, speed, amplitude, word gap, channel and noise) read sentences from a
built-in generator (numbers, names, everyday words; no copyrighted text).

* ``<out>/LibriSpeech/``: the central pre-training domain. Clean, FLAC 16 kHz, US/British
  accents, voice variants m1-m4/f1-f3, about the same number of utterances per speaker.
* ``<out>/cv-corpus/en/``: the federated fine-tuning domain, with a domain shift: other
  accents (Scottish, Caribbean, New York, Lancaster, West Midlands, ...), mostly other
  variants, wider pitch/speed ranges, band-limited channels and more noise; MP3 at 48 kHz
  (like real Common Voice clips, so the builder's resampling is exercised); utterances per
  speaker heavy-tailed (most speakers have 1-5, a few have many).

Speakers are disjoint across splits and across the two parts. Some dev/test sentences contain
held-out words that never occur in training sentences. The output is a pure function of the
settings (seed included), whatever the number of worker processes.

Command line (``make demo`` uses the defaults)::

    python -m fl_dp_asr.data.synthetic --out data/synthetic            # demo size
    python -m fl_dp_asr.data.synthetic --out /tmp/tiny --tiny          # a handful of files
    python -m fl_dp_asr.data.synthetic --out DIR --speakers 600 --utterances 4000 --seed 1

A directory that already holds a corpus made with the same settings is left as it is
(``manifest.json``, written last and atomically, records the settings).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.signal
import soundfile
import tqdm

from fl_dp_asr.data.errors import DataError
from fl_dp_asr.data.layouts import COMMON_VOICE_COLUMNS

FORMAT_VERSION = 1
ESPEAK_RATE = 22_050
LS_RATE = 16_000
MANIFEST = "manifest.json"
_OWNED_MARKER = ".synthetic-corpus"
_OUTPUTS = ("LibriSpeech", "cv-corpus")

# ---------------------------------------------------------------------------------------------
# Vocabulary and sentence generator (numbers are written as words: espeak reads what is written)
# ---------------------------------------------------------------------------------------------
_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()

WORDS: dict[str, tuple[str, ...]] = {
    "name": tuple(
        "anna ben carla david emma frank grace henry irene jack karen leo maria "
        "nick olivia peter rosa sam tina victor walter zoe alice brian chloe "
        "daniel ella felix hannah isaac julia kevin laura martin nora owen paula "
        "ruth simon tom una".split()
    ),
    "surname": tuple(
        "smith brown miller clark lewis young hall allen king wright scott "
        "green baker adams nelson hill carter turner parker evans collins "
        "stewart morris cooper ward".split()
    ),
    "noun": tuple(
        "apple table chair window door book pencil garden kitchen bottle basket "
        "candle blanket button carpet bucket ladder mirror pillow rocket wagon "
        "helmet ticket wallet bridge river forest island market station "
        "letter picture camera engine bicycle teacher doctor farmer sister "
        "brother neighbor".split()
    ),
    "place": tuple(
        "park library school office harbor museum airport village city "
        "bakery hospital theater stadium beach mountain valley".split()
    ),
    "color": tuple(
        "red blue green yellow black white orange purple brown gray pink golden silver".split()
    ),
    "adj": tuple(
        "big small warm cold quiet loud happy tired early late bright dark "
        "clean heavy light quick slow busy empty full new old".split()
    ),
    "verb": tuple(
        "found painted carried opened cleaned fixed watched visited wanted "
        "needed moved closed counted washed checked".split()
    ),
    "food": tuple(
        "bread soup cheese pasta salad rice coffee tea cake pie honey butter "
        "lemon orange potato tomato".split()
    ),
    "weather": tuple("windy sunny rainy cloudy foggy stormy".split()),
    "day": tuple("monday tuesday wednesday thursday friday saturday sunday".split()),
    "month": tuple(
        "january february march april may june july august september october "
        "november december".split()
    ),
    "direction": ("left", "right"),
}
#: Words that occur only in dev/test sentences (to measure generalization to unseen words).
HELD_OUT_WORDS: dict[str, tuple[str, ...]] = {
    "name": tuple("oscar quentin ursula yvonne xavier beatrice gregory marjorie".split()),
    "noun": tuple(
        "umbrella violin pyramid jacket kettle lantern saxophone volcano "
        "compass trumpet harvest meadow".split()
    ),
}
TEMPLATES = (
    "{name} bought {number} {color} {noun}s on {day}",
    "please call {name} at {digit} {digit} {digit} {digit}",
    "the {noun} is very {adj} today",
    "we will meet at the {place} at {hour} o'clock",
    "{name} {surname} was born in {month} {year}",
    "it's {adj} and {weather} near the {place}",
    "don't forget the {noun} and the {noun}",
    "my {noun} costs {number} dollars and {number} cents",
    "{name} said the {food} was {adj}",
    "turn {direction} after the {color} {noun}",
    "there are {number} {noun}s in the {place}",
    "{name} {verb} the {adj} {noun} last {day}",
    "on {month} {ordinal} {name} {verb} a {noun}",
    "{name} and {name} like {food} with {food}",
)
_ORDINALS = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth "
    "thirteenth fourteenth fifteenth twentieth"
).split()


def number_words(n: int) -> str:
    """English words for 0 <= n < 10000, e.g. 342 -> 'three hundred forty two'."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10 - 2] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))
    rest = n % 1000
    return _ONES[n // 1000] + " thousand" + ("" if rest == 0 else " " + number_words(rest))


def _fill(slot: str, rng: np.random.Generator, pools: dict[str, tuple[str, ...]]) -> str:
    if slot == "number":
        return number_words(int(rng.choice([rng.integers(2, 20), rng.integers(20, 1000)])))
    if slot == "digit":
        return _ONES[int(rng.integers(0, 10))]
    if slot == "hour":
        return _ONES[int(rng.integers(1, 13))]
    if slot == "year":
        return f"nineteen {number_words(int(rng.integers(20, 100)))}"
    if slot == "ordinal":
        return str(rng.choice(_ORDINALS))
    return str(rng.choice(pools[slot]))


def make_sentence(rng: np.random.Generator, held_out: bool = False) -> str:
    """A lowercase sentence of words from :data:`WORDS` (one word of :data:`HELD_OUT_WORDS`
    when ``held_out``); a quarter of them are random word sequences, not templates."""
    if rng.random() < 0.25:
        categories = [c for c in WORDS if c not in ("direction",)]
        words = [
            str(rng.choice(WORDS[str(rng.choice(categories))]))
            for _ in range(int(rng.integers(4, 9)))
        ]
        if held_out:
            category = str(rng.choice(sorted(HELD_OUT_WORDS)))
            words[int(rng.integers(len(words)))] = str(rng.choice(HELD_OUT_WORDS[category]))
        return " ".join(words)
    template = str(rng.choice(TEMPLATES))
    slots = [part.split("}")[0] for part in template.split("{")[1:]]
    replaceable = [i for i, s in enumerate(slots) if s in HELD_OUT_WORDS]
    held_out_slot = int(rng.choice(replaceable)) if held_out and replaceable else -1
    if held_out and not replaceable:
        return make_sentence(rng, held_out=True)
    values = [
        _fill(s, rng, HELD_OUT_WORDS if i == held_out_slot else WORDS) for i, s in enumerate(slots)
    ]
    return _substitute(template, values)


def _substitute(template: str, values: list[str]) -> str:
    parts = template.split("{")
    out = [parts[0]]
    for value, part in zip(values, parts[1:]):
        out.append(value + part.split("}", 1)[1])
    return "".join(out)


def _common_voice_sentence(words: str, rng: np.random.Generator) -> str:
    """Written form, as in Common Voice: capitalized names and first word, punctuation."""
    names = set(
        WORDS["name"] + WORDS["surname"] + WORDS["day"] + WORDS["month"] + HELD_OUT_WORDS["name"]
    )
    tokens = [w.capitalize() if w in names else w for w in words.split()]
    tokens[0] = tokens[0][0].upper() + tokens[0][1:]
    if len(tokens) > 5 and rng.random() < 0.3:
        tokens[2] += ","
    return " ".join(tokens) + str(rng.choice([".", ".", ".", "!", "?"]))


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """One split: name, number of speakers and of utterances (>= speakers)."""

    name: str
    speakers: int
    utterances: int


@dataclasses.dataclass(frozen=True)
class DomainSpec:
    """The voice distribution of one corpus part (what makes the two parts differ)."""

    accents: tuple[str, ...]
    variants: tuple[str, ...]
    speed: tuple[int, int]  # words per minute
    pitch: tuple[int, int]  # espeak 0-99
    amplitude: tuple[int, int]  # espeak 0-200
    word_gap: tuple[int, int]  # units of 10 ms
    snr_db: tuple[float, float]  # additive white noise
    lowpass_probability: float  # band-limited "microphone"
    lowpass_hz: tuple[float, float]


LIBRISPEECH_DOMAIN = DomainSpec(
    accents=("en-us", "en-gb", "en-gb-x-rp"),
    variants=("m1", "m2", "m3", "m4", "f1", "f2", "f3"),
    speed=(145, 175),
    pitch=(35, 65),
    amplitude=(70, 100),
    word_gap=(0, 1),
    snr_db=(35.0, 45.0),
    lowpass_probability=0.0,
    lowpass_hz=(7000.0, 7000.0),
)
COMMON_VOICE_DOMAIN = DomainSpec(
    accents=(
        "en-gb-scotland",
        "en-029",
        "en-us-nyc",
        "en-gb-x-gbclan",
        "en-gb-x-gbcwmd",
        "en-us",
        "en-gb",
    ),
    variants=("m5", "m6", "m7", "f4", "f5", "m2", "f2"),
    speed=(120, 200),
    pitch=(20, 85),
    amplitude=(40, 130),
    word_gap=(0, 4),
    snr_db=(12.0, 30.0),
    lowpass_probability=0.6,
    lowpass_hz=(3000.0, 6500.0),
)


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """Everything the corpus depends on (the manifest stores it; same config = same corpus).

    Attributes:
        seed: master seed.
        librispeech: splits of the LibriSpeech part (names of LibriSpeech subsets).
        common_voice: splits of the Common Voice part (``train``, ``dev``, ``test``).
        language: Common Voice locale directory name.
        cv_sample_rate: sample rate of the Common Voice MP3 clips (Hz).
        held_out_fraction: fraction of dev/test sentences with a held-out word.
    """

    seed: int = 0
    librispeech: tuple[SplitSpec, ...] = (
        SplitSpec("train-clean-100", 40, 1500),
        SplitSpec("dev-clean", 8, 100),
        SplitSpec("test-clean", 8, 100),
    )
    common_voice: tuple[SplitSpec, ...] = (
        SplitSpec("train", 300, 1500),
        SplitSpec("dev", 37, 187),
        SplitSpec("test", 37, 187),
    )
    language: str = "en"
    cv_sample_rate: int = 48_000
    held_out_fraction: float = 0.3

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def sized_config(
    *,
    seed: int = 0,
    speakers: int = 300,
    utterances: int = 1500,
    ls_speakers: int = 40,
    ls_utterances: int = 1500,
    cv_sample_rate: int = 48_000,
) -> CorpusConfig:
    """A config from the train sizes; dev/test get 1/8 (CV) and 1/5, 1/15 (LS) of them."""

    def split(name, n_speakers, n_utterances):
        n_speakers = max(1, n_speakers)
        return SplitSpec(name, n_speakers, max(n_speakers, n_utterances))

    return CorpusConfig(
        seed=seed,
        librispeech=(
            split("train-clean-100", ls_speakers, ls_utterances),
            split("dev-clean", ls_speakers // 5, ls_utterances // 15),
            split("test-clean", ls_speakers // 5, ls_utterances // 15),
        ),
        common_voice=(
            split("train", speakers, utterances),
            split("dev", speakers // 8, utterances // 8),
            split("test", speakers // 8, utterances // 8),
        ),
        cv_sample_rate=cv_sample_rate,
    )


def tiny_config(seed: int = 0) -> CorpusConfig:
    """A handful of utterances for tests (25 files, about a second to generate)."""
    return CorpusConfig(
        seed=seed,
        librispeech=(
            SplitSpec("train-clean-100", 2, 5),
            SplitSpec("dev-clean", 1, 2),
            SplitSpec("test-clean", 1, 2),
        ),
        common_voice=(SplitSpec("train", 3, 8), SplitSpec("dev", 2, 4), SplitSpec("test", 1, 2)),
    )


# ---------------------------------------------------------------------------------------------
# Planning (deterministic, in the main process)
# ---------------------------------------------------------------------------------------------
def heavy_tailed_counts(
    num_speakers: int, total: int, rng: np.random.Generator, max_share: float = 0.05
) -> np.ndarray:
    """Utterances per speaker like Common Voice: each >= 1, sum = total, Pareto(1.1) weights.

    Most speakers get 1-5 utterances and a few get many; no speaker gets much more than
    ``max_share`` of the total (when there are enough speakers).
    """
    weights = rng.pareto(1.1, num_speakers) + 0.05
    share = weights / weights.sum()
    cap = max(max_share, 1.0 / num_speakers)
    for _ in range(50):
        share = np.minimum(share, cap)
        share /= share.sum()
    return 1 + rng.multinomial(total - num_speakers, share)


def even_counts(num_speakers: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """About the same number per speaker (LibriSpeech: ~25 minutes each), sum = total."""
    counts = np.full(num_speakers, total // num_speakers)
    counts[rng.permutation(num_speakers)[: total % num_speakers]] += 1
    return counts


@dataclasses.dataclass(frozen=True)
class Voice:
    """espeak-ng settings and channel of one synthetic speaker."""

    accent: str
    variant: str
    speed: int
    pitch: int
    amplitude: int
    word_gap: int
    snr_db: float
    lowpass_hz: float  # 0 = none

    @property
    def gender(self) -> str:
        return "female" if self.variant.startswith("f") else "male"


def _voice(domain: DomainSpec, rng: np.random.Generator) -> Voice:
    lowpass = (
        float(rng.uniform(*domain.lowpass_hz)) if rng.random() < domain.lowpass_probability else 0.0
    )
    return Voice(
        accent=str(rng.choice(domain.accents)),
        variant=str(rng.choice(domain.variants)),
        speed=int(rng.integers(domain.speed[0], domain.speed[1] + 1)),
        pitch=int(rng.integers(domain.pitch[0], domain.pitch[1] + 1)),
        amplitude=int(rng.integers(domain.amplitude[0], domain.amplitude[1] + 1)),
        word_gap=int(rng.integers(domain.word_gap[0], domain.word_gap[1] + 1)),
        snr_db=float(rng.uniform(*domain.snr_db)),
        lowpass_hz=lowpass,
    )


@dataclasses.dataclass(frozen=True)
class Job:
    """One utterance to synthesize into ``relative_path`` (a worker's whole input)."""

    relative_path: str
    text: str
    voice: Voice
    sample_rate: int
    seed: int


@dataclasses.dataclass
class _Plan:
    jobs: list[Job] = dataclasses.field(default_factory=list)
    # LibriSpeech: (split, speaker, chapter) -> [(utterance id, TRANSCRIPT)]
    ls_chapters: dict[tuple[str, str, str], list[tuple[str, str]]] = dataclasses.field(
        default_factory=dict
    )
    ls_speakers: list[tuple[str, Voice, str]] = dataclasses.field(default_factory=list)
    # Common Voice: split -> rows (dicts keyed by COMMON_VOICE_COLUMNS)
    cv_rows: dict[str, list[dict[str, str]]] = dataclasses.field(default_factory=dict)


_CV_ACCENT_LABELS = {
    "en-gb-scotland": "Scottish English",
    "en-029": "Caribbean English",
    "en-us-nyc": "New York English",
    "en-gb-x-gbclan": "Lancashire English",
    "en-gb-x-gbcwmd": "West Midlands English",
    "en-us": "United States English",
    "en-gb": "England English",
}
_CV_AGES = ("teens", "twenties", "thirties", "fourties", "fifties", "sixties")


def plan_corpus(config: CorpusConfig) -> _Plan:
    """Speakers, sentences and file names of the whole corpus, from ``config`` alone."""
    rng = np.random.default_rng(config.seed)
    plan = _Plan()
    ls_total = sum(s.speakers for s in config.librispeech)
    speaker_ids = rng.choice(np.arange(10, 10_000), ls_total, replace=False)
    chapter_ids = iter(rng.choice(np.arange(10, 200_000), 3 * ls_total, replace=False).tolist())
    next_speaker = 0
    for split in config.librispeech:
        counts = even_counts(split.speakers, split.utterances, rng)
        held_out_allowed = not split.name.startswith("train")
        for count in counts:
            speaker = str(speaker_ids[next_speaker])
            next_speaker += 1
            voice = _voice(LIBRISPEECH_DOMAIN, rng)
            plan.ls_speakers.append((speaker, voice, split.name))
            chapters = [str(next(chapter_ids)) for _ in range(int(rng.integers(1, 4)))]
            for k in range(int(count)):
                chapter = chapters[k % len(chapters)]
                utterances = plan.ls_chapters.setdefault((split.name, speaker, chapter), [])
                utterance_id = f"{speaker}-{chapter}-{len(utterances):04d}"
                held_out = held_out_allowed and rng.random() < config.held_out_fraction
                words = make_sentence(rng, held_out)
                utterances.append((utterance_id, words.upper()))
                plan.jobs.append(
                    Job(
                        f"LibriSpeech/{split.name}/{speaker}/{chapter}/{utterance_id}.flac",
                        words,
                        voice,
                        LS_RATE,
                        int(rng.integers(2**31)),
                    )
                )
    clip_numbers = iter(
        np.sort(
            rng.choice(
                np.arange(10_000_000, 40_000_000),
                sum(s.utterances for s in config.common_voice),
                replace=False,
            )
        ).tolist()
    )
    speaker_number = 0
    for split in config.common_voice:
        counts = heavy_tailed_counts(split.speakers, split.utterances, rng)
        held_out_allowed = split.name != "train"
        rows = plan.cv_rows.setdefault(split.name, [])
        for count in counts:
            client_id = hashlib.sha512(
                f"synthetic-{config.seed}-{speaker_number}".encode()
            ).hexdigest()
            speaker_number += 1
            voice = _voice(COMMON_VOICE_DOMAIN, rng)
            age = str(rng.choice(_CV_AGES))
            for _ in range(int(count)):
                held_out = held_out_allowed and rng.random() < config.held_out_fraction
                words = make_sentence(rng, held_out)
                sentence = _common_voice_sentence(words, rng)
                clip = f"common_voice_{config.language}_{next(clip_numbers)}.mp3"
                rows.append(
                    {
                        "client_id": client_id,
                        "path": clip,
                        "sentence_id": hashlib.sha256(sentence.encode()).hexdigest(),
                        "sentence": sentence,
                        "sentence_domain": "",
                        "up_votes": "2",
                        "down_votes": "0",
                        "age": age,
                        "gender": f"{voice.gender}_"
                        f"{'feminine' if voice.gender == 'female' else 'masculine'}",
                        "accents": _CV_ACCENT_LABELS[voice.accent],
                        "variant": "",
                        "locale": config.language,
                        "segment": "",
                    }
                )
                plan.jobs.append(
                    Job(
                        f"cv-corpus/{config.language}/clips/{clip}",
                        words,
                        voice,
                        config.cv_sample_rate,
                        int(rng.integers(2**31)),
                    )
                )
    return plan


# ---------------------------------------------------------------------------------------------
# Synthesis (worker processes)
# ---------------------------------------------------------------------------------------------
def espeak(text: str, voice: Voice) -> np.ndarray:
    """Runs espeak-ng; returns float32 samples at 22,050 Hz (int16 scale)."""
    command = [
        "espeak-ng",
        "-v",
        f"{voice.accent}+{voice.variant}",
        "-s",
        str(voice.speed),
        "-p",
        str(voice.pitch),
        "-a",
        str(voice.amplitude),
        "-g",
        str(voice.word_gap),
        "--stdout",
        text,
    ]
    try:
        wav = subprocess.run(command, capture_output=True, check=True).stdout
    except FileNotFoundError:
        raise DataError(
            "espeak-ng is not installed: run `apt-get install -y espeak-ng` "
            "(or `make system-deps`)."
        ) from None
    except subprocess.CalledProcessError as error:
        raise DataError(
            f"espeak-ng failed ({' '.join(command)}): {error.stderr.decode(errors='replace')}"
        ) from error
    audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    assert rate == ESPEAK_RATE, rate
    return audio * 32768.0


def channel(audio: np.ndarray, voice: Voice, sample_rate: int, seed: int) -> np.ndarray:
    """espeak-ng output (float32 [samples] at 22,050 Hz, int16 scale) through ``voice``'s
    channel: resampled to ``sample_rate`` Hz, low-passed, white noise at ``voice.snr_db``
    (from ``seed``); int16 [samples']."""
    divisor = np.gcd(sample_rate, ESPEAK_RATE)
    audio = scipy.signal.resample_poly(audio, sample_rate // divisor, ESPEAK_RATE // divisor)
    if voice.lowpass_hz:
        sos = scipy.signal.butter(2, voice.lowpass_hz, fs=sample_rate, output="sos")
        audio = scipy.signal.sosfilt(sos, audio)
    rng = np.random.default_rng(seed)
    rms = float(np.sqrt(np.mean(audio**2))) or 1.0
    audio = audio + rng.normal(0.0, rms * 10 ** (-voice.snr_db / 20), audio.shape)
    return np.clip(np.rint(audio), -32768, 32767).astype(np.int16)


def render(job: Job) -> np.ndarray:
    """The int16 waveform of ``job`` at ``job.sample_rate`` (resample, channel, noise)."""
    return channel(espeak(job.text, job.voice), job.voice, job.sample_rate, job.seed)


def write_clip(path: str | pathlib.Path, audio: np.ndarray, sample_rate: int) -> None:
    """Writes int16 ``audio`` as the corpus does: FLAC for a ``.flac`` path, else MP3."""
    if pathlib.Path(path).suffix == ".flac":
        soundfile.write(str(path), audio, sample_rate, format="FLAC")
    else:  # Variable bitrate, low quality: ~35 kbit/s, and 30 % faster to encode than the default.
        soundfile.write(str(path), audio, sample_rate, format="MP3", compression_level=0.9)


def _synthesize(args: tuple[Job, str]) -> tuple[str, float]:
    job, root = args
    audio = render(job)
    write_clip(pathlib.Path(root) / job.relative_path, audio, job.sample_rate)
    return job.relative_path, len(audio) / job.sample_rate


# ---------------------------------------------------------------------------------------------
# Writing the index files
# ---------------------------------------------------------------------------------------------
def _write_librispeech_index(root: pathlib.Path, plan: _Plan, seconds: dict[str, float]) -> None:
    for (split, speaker, chapter), utterances in plan.ls_chapters.items():
        lines = [f"{utterance_id} {text}\n" for utterance_id, text in utterances]
        (
            root / "LibriSpeech" / split / speaker / chapter / f"{speaker}-{chapter}.trans.txt"
        ).write_text("".join(lines), encoding="utf-8")
    minutes: dict[str, float] = {}
    for path, duration in seconds.items():
        if path.startswith("LibriSpeech/"):
            speaker = path.split("/")[2]
            minutes[speaker] = minutes.get(speaker, 0.0) + duration / 60
    header = (
        "; Synthetic speakers (espeak-ng), written in the format of LibriSpeech's "
        "SPEAKERS.TXT\n"
        "; Fields: reader ID, sex, subset, minutes in the subset, name (voice settings)\n"
        ";ID  |SEX| SUBSET           |MINUTES| NAME\n"
    )
    rows = [
        f"{speaker:<5}| {'F' if voice.gender == 'female' else 'M'} | {split:<17}| "
        f"{minutes.get(speaker, 0.0):6.2f} | {voice.accent}+{voice.variant} s{voice.speed} "
        f"p{voice.pitch}\n"
        for speaker, voice, split in sorted(plan.ls_speakers, key=lambda s: int(s[0]))
    ]
    (root / "LibriSpeech" / "SPEAKERS.TXT").write_text(header + "".join(rows), encoding="utf-8")


def _write_tsv(path: pathlib.Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n")
        writer.writerow(COMMON_VOICE_COLUMNS)
        for row in rows:
            writer.writerow([row[c] for c in COMMON_VOICE_COLUMNS])


def _write_common_voice_index(root: pathlib.Path, plan: _Plan, language: str) -> None:
    language_dir = root / "cv-corpus" / language
    for split, rows in plan.cv_rows.items():
        _write_tsv(language_dir / f"{split}.tsv", rows)
    _write_tsv(language_dir / "validated.tsv", [r for rows in plan.cv_rows.values() for r in rows])


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------
def _summary(plan: _Plan, seconds: dict[str, float], config: CorpusConfig) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for split in config.librispeech:
        prefix = f"LibriSpeech/{split.name}/"
        durations = [s for p, s in seconds.items() if p.startswith(prefix)]
        summary[f"librispeech/{split.name}"] = {
            "speakers": split.speakers,
            "utterances": len(durations),
            "hours": round(sum(durations) / 3600, 4),
        }
    clip_seconds = {p.rsplit("/", 1)[1]: s for p, s in seconds.items() if p.startswith("cv-")}
    for cv_split, rows in plan.cv_rows.items():
        summary[f"common_voice/{cv_split}"] = {
            "speakers": len({r["client_id"] for r in rows}),
            "utterances": len(rows),
            "hours": round(sum(clip_seconds[r["path"]] for r in rows) / 3600, 4),
        }
    return summary


def _claim(out: pathlib.Path, force: bool) -> None:
    """Makes ``out`` ours: refuses to overwrite a corpus this tool did not write."""
    foreign = [name for name in _OUTPUTS if (out / name).exists()]
    owned = (out / MANIFEST).exists() or (out / _OWNED_MARKER).exists()
    if foreign and not (owned or force):
        raise DataError(
            f"{out} already holds {foreign} that this generator did not write; "
            "choose another --out or pass --force to replace them."
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / _OWNED_MARKER).touch()
    (out / MANIFEST).unlink(missing_ok=True)
    for name in foreign:
        shutil.rmtree(out / name)


def generate_corpus(
    out_dir: str | pathlib.Path,
    config: CorpusConfig = CorpusConfig(),
    *,
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Generates the corpus into ``out_dir`` unless it already holds the same one.

    Args:
        out_dir: output directory; gets ``LibriSpeech/``, ``cv-corpus/`` and ``manifest.json``.
        config: sizes and seed.
        workers: processes (default: all CPUs); 1 runs in this process.
        progress: show a tqdm progress bar.
        force: replace ``LibriSpeech/`` / ``cv-corpus/`` even if this tool did not write them.

    Returns:
        The manifest: settings, per-split speakers / utterances / hours, generation seconds.

    Raises:
        DataError: espeak-ng is missing or fails, or ``out_dir`` holds someone else's corpus.
    """
    out = pathlib.Path(out_dir)
    settings = {"format_version": FORMAT_VERSION, "config": config.to_json()}
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError, KeyError):
        manifest = json.loads((out / MANIFEST).read_text())
        if {k: manifest[k] for k in settings} == settings:
            return manifest
    start = time.perf_counter()
    _claim(out, force)
    plan = plan_corpus(config)
    tmp = out / f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for job in plan.jobs:
        (tmp / job.relative_path).parent.mkdir(parents=True, exist_ok=True)
    workers = min(workers or os.cpu_count() or 1, max(1, len(plan.jobs) // 100))
    tasks = [(job, str(tmp)) for job in plan.jobs]
    bar = tqdm.tqdm(total=len(tasks), desc="synthesizing", unit="utt", disable=not progress)
    seconds: dict[str, float] = {}
    try:
        if workers == 1:
            results = map(_synthesize, tasks)
            for path, duration in results:
                seconds[path] = duration
                bar.update()
        else:
            with multiprocessing.get_context("forkserver").Pool(workers) as pool:
                for path, duration in pool.imap_unordered(_synthesize, tasks, chunksize=8):
                    seconds[path] = duration
                    bar.update()
        bar.close()
        _write_librispeech_index(tmp, plan, seconds)
        _write_common_voice_index(tmp, plan, config.language)
        for name in _OUTPUTS:
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    manifest = {
        **settings,
        "generator": "fl_dp_asr.data.synthetic",
        "splits": _summary(plan, seconds, config),
        "generation_seconds": round(time.perf_counter() - start, 1),
        "workers": workers,
    }
    partial = out / f"{MANIFEST}.tmp"
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(partial, out / MANIFEST)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fl_dp_asr.data.synthetic",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--speakers",
        type=int,
        default=300,
        help="Common Voice (federated) train speakers; dev/test get 1/8 each",
    )
    parser.add_argument(
        "--utterances",
        type=int,
        default=1500,
        help="Common Voice train utterances (heavy-tailed over speakers)",
    )
    parser.add_argument(
        "--ls-speakers",
        type=int,
        default=40,
        help="LibriSpeech train-clean-100 speakers; dev/test-clean get 1/5 each",
    )
    parser.add_argument(
        "--ls-utterances",
        type=int,
        default=1500,
        help="LibriSpeech train-clean-100 utterances; dev/test-clean get 1/15",
    )
    parser.add_argument("--cv-sample-rate", type=int, default=48_000, choices=(32_000, 48_000))
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a handful of utterances (tests); ignores the size flags",
    )
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPUs)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace LibriSpeech/ and cv-corpus/ not written by this tool",
    )
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = (
        tiny_config(args.seed)
        if args.tiny
        else sized_config(
            seed=args.seed,
            speakers=args.speakers,
            utterances=args.utterances,
            ls_speakers=args.ls_speakers,
            ls_utterances=args.ls_utterances,
            cv_sample_rate=args.cv_sample_rate,
        )
    )
    try:
        manifest = generate_corpus(
            args.out, config, workers=args.workers, progress=not args.no_progress, force=args.force
        )
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for split, stats in manifest["splits"].items():
        print(
            f"{split:<28} {stats['speakers']:>5} speakers {stats['utterances']:>6} utterances "
            f"{stats['hours']:7.3f} h"
        )
    print(f"corpus in {args.out} ({manifest['generation_seconds']} s to generate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
