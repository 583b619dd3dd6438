"""The synthetic corpus: official layouts readable back, speakers, heavy tail, determinism."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile

from fl_dp_asr.data import DataError, layouts
from fl_dp_asr.data.synthetic import (
    HELD_OUT_WORDS,
    CorpusConfig,
    SplitSpec,
    generate_corpus,
    heavy_tailed_counts,
    number_words,
    plan_corpus,
    render,
    sized_config,
    tiny_config,
)
from fl_dp_asr.text import normalize


def test_librispeech_layout_reads_back(tiny_corpus):
    manifest = json.loads((tiny_corpus / "manifest.json").read_text())
    speakers = layouts.read_librispeech_speakers(tiny_corpus / "LibriSpeech" / "SPEAKERS.TXT")
    for split in tiny_config().librispeech:
        records = list(layouts.iter_librispeech(tiny_corpus, split.name))
        assert (
            len(records)
            == split.utterances
            == manifest["splits"][f"librispeech/{split.name}"]["utterances"]
        )
        assert {r.user_id for r in records} <= {
            s for s, i in speakers.items() if i.subset == split.name
        }
        for record in records:
            speaker, chapter, _ = record.utterance_id.split("-")
            assert record.audio_path.parts[-3:] == (speaker, chapter, f"{record.utterance_id}.flac")
            assert record.raw_transcript == record.raw_transcript.upper() != ""
            info = soundfile.info(str(record.audio_path))
            assert (info.samplerate, info.channels, info.format) == (16_000, 1, "FLAC")


def test_common_voice_layout_reads_back(tiny_corpus):
    language_dir = layouts.find_common_voice_dir(tiny_corpus, "en")
    assert language_dir == tiny_corpus / "cv-corpus" / "en"
    all_clips = []
    for split in tiny_config().common_voice:
        header = (language_dir / f"{split.name}.tsv").read_text().splitlines()[0]
        assert tuple(header.split("\t")) == layouts.COMMON_VOICE_COLUMNS
        records = list(layouts.iter_common_voice(tiny_corpus, "en", split.name))
        assert len(records) == split.utterances
        assert len({r.user_id for r in records}) == split.speakers
        all_clips += [r.utterance_id for r in records]
        info = soundfile.info(str(records[0].audio_path))
        assert (info.samplerate, info.format) == (48_000, "MP3")
    validated = [r.utterance_id for r in layouts.iter_common_voice(tiny_corpus, "en", "validated")]
    assert sorted(validated) == sorted(all_clips)


def test_speakers_disjoint_across_splits_and_parts(tiny_corpus):
    groups = [
        {r.user_id for r in layouts.iter_librispeech(tiny_corpus, s.name)}
        for s in tiny_config().librispeech
    ]
    groups += [
        {r.user_id for r in layouts.iter_common_voice(tiny_corpus, "en", s.name)}
        for s in tiny_config().common_voice
    ]
    assert sum(len(g) for g in groups) == len(set().union(*groups))


def test_cached_corpus_is_not_regenerated(tiny_corpus):
    manifest_before = (tiny_corpus / "manifest.json").read_text()
    mtime = os.stat(tiny_corpus / "cv-corpus" / "en" / "train.tsv").st_mtime_ns
    manifest = generate_corpus(tiny_corpus, tiny_config(seed=0), workers=1, progress=False)
    assert json.dumps(manifest, indent=2) + "\n" == manifest_before
    assert os.stat(tiny_corpus / "cv-corpus" / "en" / "train.tsv").st_mtime_ns == mtime


def test_plan_and_audio_are_deterministic():
    first, second = plan_corpus(tiny_config(seed=3)), plan_corpus(tiny_config(seed=3))
    assert first.jobs == second.jobs and first.cv_rows == second.cv_rows
    assert plan_corpus(tiny_config(seed=4)).jobs != first.jobs
    np.testing.assert_array_equal(render(first.jobs[0]), render(first.jobs[0]))


def test_default_plan_held_out_words_and_text():
    plan = plan_corpus(CorpusConfig())
    held_out = set().union(*HELD_OUT_WORDS.values())
    train_clips = {row["path"] for row in plan.cv_rows["train"]}
    train_words = {
        w
        for job in plan.jobs
        for w in job.text.split()
        if "/train-clean-100/" in job.relative_path
        or job.relative_path.rsplit("/", 1)[1] in train_clips
    }
    other_words = {w for job in plan.jobs for w in job.text.split()} - train_words
    assert not train_words & held_out
    assert other_words & held_out
    for rows in plan.cv_rows.values():
        for row in rows:
            assert normalize(row["sentence"]).dropped == ""
    assert {job.voice.accent for job in plan.jobs if job.sample_rate == 16_000}.isdisjoint(
        {"en-gb-scotland", "en-029"}
    )


def test_heavy_tailed_counts():
    counts = heavy_tailed_counts(300, 1800, np.random.default_rng(0))
    assert counts.sum() == 1800 and counts.min() >= 1
    assert np.median(counts) <= 5 and (counts <= 5).mean() > 0.5
    assert counts.max() >= 30


def test_sized_config_and_number_words():
    config = sized_config(speakers=80, utterances=400, ls_speakers=10, ls_utterances=300)
    assert config.common_voice[0] == SplitSpec("train", 80, 400)
    assert config.common_voice[1] == SplitSpec("dev", 10, 50)
    assert config.librispeech[1] == SplitSpec("dev-clean", 2, 20)
    assert sized_config() == CorpusConfig()
    assert number_words(342) == "three hundred forty two"
    assert number_words(2005) == "two thousand five"


def test_refuses_to_overwrite_a_foreign_corpus(tmp_path):
    (tmp_path / "LibriSpeech").mkdir()
    with pytest.raises(DataError, match="did not write"):
        generate_corpus(tmp_path, tiny_config(), workers=1, progress=False)
