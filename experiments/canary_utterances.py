"""The memorization audit of ``config.audit.utterances`` in a trainer (README "Memorization
audit"): sped-up canary utterances inserted into chosen training users' data when the data
is loaded, and measured (:mod:`fl_dp_asr.memorization.measure`) at every evaluation and at
the end.

Both trainers use it: ``experiments.train_fl`` (users = FL clients) and
``experiments.train_central`` (the seed model's training data: the paper's central baseline).
A config with ``audit.utterances.per_repeat = 0`` inserts nothing and measures nothing: its run
is bit-identical to one without the section.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np

from fl_dp_asr.data import federated
from fl_dp_asr.memorization import measure, utterances
from fl_dp_asr.models.config import ModelConfig
from fl_dp_asr.text.tokenizer import CharTokenizer
from fl_dp_asr.train import utils
from fl_dp_asr.train.metrics import MetricWriter

PyTree = Any
Log = Callable[[str], None]
#: The audio format each builder's corpus layout stores (the canaries go through its codec).
BUILDER_FORMATS = {"librispeech_local": "flac", "common_voice_local": "mp3"}
DIRECTORY = "memorization"  # <workdir>/memorization: canaries.json, per_canary.json, plot


def spec_of(config: ml_collections.ConfigDict) -> utterances.UtteranceCanarySpec | None:
    """The canary spec of ``config.audit.utterances`` (None: off).

    Raises:
        ValueError: a field the spec rejects, named ``config.audit.utterances.<field>``.
    """
    fields = config.audit.utterances
    if fields.per_repeat == 0:
        return None
    names = {f.name for f in dataclasses.fields(utterances.UtteranceCanarySpec)}
    values = {k: fields[k] for k in names}
    values["repeats"] = tuple(int(r) for r in values["repeats"])
    spec = utterances.UtteranceCanarySpec(**values)
    spec.check()
    if not fields.candidates >= 2:
        raise ValueError(
            f"config.audit.utterances.candidates={fields.candidates}: the exposure ranks a "
            "canary among M >= 2 texts (e.g. 1000)."
        )
    return spec


@dataclasses.dataclass(frozen=True)
class Audit:
    """The canaries of a run and what measures them."""

    canaries: list[utterances.UtteranceCanary]
    candidates: list[list[str]]  # per canary: M - 1 random texts of its format
    beam_width: int
    tokenizer: CharTokenizer

    def measure(
        self, params: PyTree, model_config: ModelConfig
    ) -> tuple[list[dict[str, Any]], dict[str, float]]:
        """Per-canary scores (id, text, repeats, user + :func:`measure.score_utterances`'s
        fields) and their summary (:func:`measure.summarize`)."""
        scores = measure.score_utterances(
            params,
            model_config,
            self.tokenizer,
            [c.audio for c in self.canaries],
            [c.text for c in self.canaries],
            self.candidates,
            self.beam_width,
        )
        rows = [
            {"canary_id": c.canary_id, "text": c.text, "repeats": c.repeats, "user": c.user}
            | dict(score)
            for c, score in zip(self.canaries, scores, strict=True)
        ]
        return rows, measure.summarize(rows)


def insert(
    config: ml_collections.ConfigDict,
    data: utils.Data,
    tokenizer: CharTokenizer,
    workdir: str | None,
    log: Log = print,
) -> tuple[utils.Data, Audit | None]:
    """``data`` with the canaries of ``config.audit.utterances`` in their training users'
    data (the padded-length buckets refitted), and the audit that measures them (``data``
    itself and None when off). Writes ``<workdir>/memorization/canaries.json`` (texts,
    users, repeats, seconds; not with ``workdir=None``).

    Raises:
        ValueError: a bad setting, or a corpus whose users cannot be identified.
    """
    spec = spec_of(config)
    if spec is None:
        return data, None
    train = data.train
    audio_format = BUILDER_FORMATS.get(config.data.name)
    if audio_format is None:
        raise ValueError(
            f"config.audit.utterances: canary utterances are synthesized in the corpus's "
            f"audio format, known for {sorted(BUILDER_FORMATS)}, not config.data.name="
            f"{config.data.name!r}."
        )
    vocabulary = utterances.corpus_vocabulary(train)
    canaries = utterances.make_canaries(
        spec, train, audio_format=audio_format, vocabulary=vocabulary
    )
    rng = np.random.default_rng([spec.seed, 1])  # the candidates: apart from the canaries
    candidates = [
        utterances.random_texts(spec, rng, config.audit.utterances.candidates - 1, vocabulary)
        for _ in canaries
    ]
    if workdir is not None:
        os.makedirs(os.path.join(workdir, DIRECTORY), exist_ok=True)
        utterances.write_manifest(os.path.join(workdir, DIRECTORY, "canaries.json"), canaries)
    inserted = [c for c in canaries if c.repeats > 0]
    log(
        f"Memorization audit: {len(inserted)} canary utterances ({spec.speedup:g}x speed) "
        f"inserted {'/'.join(map(str, spec.repeats))} times into "
        f"{len({c.user for c in inserted})} users' data, {len(canaries) - len(inserted)} "
        "held out."
    )
    audit = Audit(canaries, candidates, config.audit.utterances.beam_width, tokenizer)
    train = utterances.insert(train, canaries)
    buckets = federated.LengthBuckets.for_dataset(train, tokenizer.encode, config.data.num_buckets)
    return data._replace(train=train, buckets=buckets), audit


def check_model(audit: Audit | None, model_config: ModelConfig) -> None:
    """Raises ValueError (naming ``config.audit.utterances.speedup``) when the model's
    frames are too few for a canary's labels: CTC could not emit it at all."""
    if audit is not None:
        utterances.check_transcribable(audit.canaries, model_config.frame_seconds, audit.tokenizer)


def record(
    audit: Audit,
    params: PyTree,
    model_config: ModelConfig,
    workdir: str,
    step: int,
    writer: MetricWriter,
    log: Log = print,
) -> dict[str, float]:
    """Measures the canaries after ``step`` rounds (or steps); writes
    ``<workdir>/memorization/per_canary.json`` and ``memorization.png`` (atomically), the
    summary to ``writer`` (``metrics.jsonl`` under ``memorization``) and one log line.
    Returns the summary."""
    rows, summary = audit.measure(params, model_config)
    writer.write(step, {"memorization": summary})
    utils.write_json(
        os.path.join(workdir, DIRECTORY, "per_canary.json"), {"step": step, "canaries": rows}
    )
    measure.plot(
        {f"step {step}": summary},
        {f"step {step}": rows},
        os.path.join(workdir, DIRECTORY, "memorization.png"),
    )
    log(f"[{step}] {measure.format_line(summary)}")
    return summary


def summary_fields(summary: Mapping[str, float]) -> dict[str, float]:
    """``summary.json``'s ``memorization_*`` fields of a :func:`record` summary ({}: none)."""
    return {f"memorization_{k}": v for k, v in summary.items()}


def plot(runs: Mapping[str, str], path: str) -> None:
    """The memorization plot of finished runs: ``{label: workdir}``."""
    summaries, per_canary = {}, {}
    for label, workdir in runs.items():
        with open(os.path.join(workdir, DIRECTORY, "per_canary.json"), encoding="utf-8") as f:
            found = json.load(f)
        per_canary[label] = found["canaries"]
        summaries[label] = measure.summarize(found["canaries"])
    measure.plot(summaries, per_canary, path)


def repeats_of(summary: Mapping[str, Any]) -> list[int]:
    """The repetition counts r of a ``summary.json`` with ``memorization_*`` fields."""
    return sorted(
        {
            int(k.split("/")[0].removeprefix("memorization_r"))
            for k in summary
            if k.startswith("memorization_r")
        }
    )
