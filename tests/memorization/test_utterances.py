"""Canary utterances: texts, audio, insertion into users' data, errors."""

from __future__ import annotations

import dataclasses
import doctest
import json
import re

import numpy as np
import pytest

from fl_dp_asr.data import FederatedDataset, LengthBuckets, make_batch
from fl_dp_asr.data.stats import format_summary, summarize
from fl_dp_asr.memorization import utterances
from fl_dp_asr.memorization.utterances import (
    CanarySource,
    UtteranceCanary,
    UtteranceCanarySpec,
    canary_voice,
    check_transcribable,
    ctc_frames_needed,
    insert,
    make_canaries,
    random_texts,
    synthesize,
    write_manifest,
)
from fl_dp_asr.text import CharTokenizer

#: 2 inserted canaries per repetition count (1, 3) for 2 users, and 3 held-out ones.
SPEC = UtteranceCanarySpec(per_repeat=2, repeats=(1, 3), users=2, heldout=3, seed=7)
WORD = re.compile(r"^[a-z]{4}$")  # the default kind: 4 random letters
SYLLABLE_WORD = re.compile(r"^([bdfgklmnprstvz][aeiou]){2}$")


@pytest.fixture(scope="module")
def cv_canaries(cv_train) -> list[UtteranceCanary]:
    return make_canaries(SPEC, cv_train, audio_format="mp3")


def test_doctests():
    failures, tried = doctest.testmod(utterances)
    assert tried >= 1 and failures == 0


def test_same_spec_and_users_give_the_same_canaries(cv_train, cv_canaries):
    again = make_canaries(SPEC, cv_train, audio_format="mp3")
    assert again == cv_canaries
    assert [c.audio.tobytes() for c in again] == [c.audio.tobytes() for c in cv_canaries]
    other_seed = make_canaries(dataclasses.replace(SPEC, seed=8), cv_train, audio_format="mp3")
    assert [c.text for c in other_seed] != [c.text for c in cv_canaries]


def test_ids_repeats_and_users_dealt_round_robin(cv_train, cv_canaries):
    assert [(c.canary_id, c.repeats) for c in cv_canaries] == [
        ("canary-r1-000", 1),
        ("canary-r1-001", 1),
        ("canary-r3-000", 3),
        ("canary-r3-001", 3),
        ("canary-heldout-000", 0),
        ("canary-heldout-001", 0),
        ("canary-heldout-002", 0),
    ]
    users = [c.user for c in cv_canaries[:4]]
    assert len(set(users)) == 2 and set(users) <= set(cv_train.users)
    assert users[0::2] == [users[0]] * 2 and users[1::2] == [users[1]] * 2  # round robin
    assert all(c.user is None for c in cv_canaries[4:])
    assert all(c.audio.dtype == np.int16 and c.audio.ndim == 1 for c in cv_canaries)


def test_texts_are_pseudo_words_outside_the_corpus_and_all_distinct(cv_train, cv_canaries):
    texts = [c.text for c in cv_canaries]
    vocabulary = {w for t in cv_train.transcripts for w in t.split()}
    assert len(vocabulary) > 20
    assert len(set(texts)) == len(texts)
    assert not set(texts) & set(cv_train.transcripts)
    for text in texts:
        words = text.split()
        assert len(words) == SPEC.words and all(WORD.match(w) for w in words), text
        assert not vocabulary & set(words)


def test_syllable_texts_are_consonant_vowel_pseudo_words():
    spec = UtteranceCanarySpec(kind="syllables")
    for text in random_texts(spec, np.random.default_rng(1), 10, set()):
        assert all(SYLLABLE_WORD.match(w) for w in text.split()), text


def test_random_texts_never_use_an_excluded_word():
    spec = UtteranceCanarySpec(kind="syllables", words=1, letters=2)  # 70 possible words
    drawn = random_texts(spec, np.random.default_rng(0), 20, set())
    assert len(set(drawn)) == 20
    rest = random_texts(spec, np.random.default_rng(0), 20, set(drawn))
    assert not set(rest) & set(drawn)
    with pytest.raises(ValueError, match=r"config\.audit\.utterances\.words"):
        random_texts(spec, np.random.default_rng(0), 36, set())


def test_insert_puts_each_canary_in_its_users_rows_repeats_times(cv_train, cv_canaries):
    data = insert(cv_train, cv_canaries)
    n = len(cv_train)
    assert len(data) == n + 1 + 1 + 3 + 3
    tokenizer = CharTokenizer()
    for canary in cv_canaries[:4]:
        rows = [
            r
            for r in data.rows_of(canary.user).tolist()
            if data.utterance_ids[r].startswith(canary.canary_id + "-")
        ]
        assert [data.utterance_ids[r] for r in rows] == [
            f"{canary.canary_id}-{j}" for j in range(canary.repeats)
        ]
        assert all(data.transcripts[r] == canary.text for r in rows)
        batch = make_batch(data, rows, tokenize=tokenizer.encode, buckets=LengthBuckets())
        for b in range(len(rows)):
            length = batch["audio_lengths"][b]
            np.testing.assert_array_equal(batch["audio"][b, :length], canary.audio)
            labels = batch["labels"][b, : batch["label_lengths"][b]]
            assert tokenizer.decode(labels) == canary.text
    assert not any(u.startswith("canary-heldout") for u in data.utterance_ids)


def test_insert_changes_nothing_else(cv_train, cv_canaries):
    data = insert(cv_train, cv_canaries)
    n = len(cv_train)
    assert data.users == cv_train.users
    assert data.user_of_row[:n] == cv_train.user_of_row
    assert data.utterance_ids[:n] == cv_train.utterance_ids
    assert data.transcripts[:n] == cv_train.transcripts
    assert data.genders[:n] == cv_train.genders
    assert data.user_genders() == cv_train.user_genders()
    np.testing.assert_array_equal(data.num_samples[:n], cv_train.num_samples)
    np.testing.assert_array_equal(data.source_indices[:n], cv_train.source_indices)
    before, after = cv_train.audios(range(n)), data.audios(range(n))
    assert all(np.array_equal(before[r], after[r]) for r in range(n))
    holders = {c.user for c in cv_canaries if c.user}
    for user in set(cv_train.users) - holders:
        np.testing.assert_array_equal(data.rows_of(user), cv_train.rows_of(user))
    for user in holders:
        assert data.rows_of(user)[: len(cv_train.rows_of(user))].tolist() == (
            cv_train.rows_of(user).tolist()
        )


def test_the_new_source_reads_like_the_old_one_then_the_canaries(cv_train, cv_canaries):
    data = insert(cv_train, cv_canaries)
    source = data.source
    assert isinstance(source, CanarySource) and len(source) == len(cv_train.source) + 8
    last = len(source) - 1
    mixed = source.__getitems__([last, 0, last - 1])
    assert mixed[0]["utterance_id"] == b"canary-r3-001-2"
    assert mixed[1]["utterance_id"] == cv_train.source[0]["utterance_id"]
    assert FederatedDataset.from_source(source).utterance_ids == data.utterance_ids
    with pytest.raises(IndexError):
        source[len(source)]


def test_the_statistics_show_canary_rows(cv_train, cv_canaries):
    summary = summarize(insert(cv_train, cv_canaries))
    assert (summary["canary_utterances"], summary["canary_users"]) == (8, 2)
    assert "  canary utterances: 8 in 2 users\n" in format_summary("cv", summary)
    assert "canary" not in format_summary("cv", summarize(cv_train))


def test_the_librispeech_layout_gets_flac_canaries(ls_train):
    spec = UtteranceCanarySpec(per_repeat=1, repeats=(2,), users=1, heldout=1)
    canaries = make_canaries(spec, ls_train, audio_format="flac")
    assert canaries[0].user in ls_train.users and canaries[1].user is None
    data = insert(ls_train, canaries)
    assert data.utterance_ids[len(ls_train) :] == ["canary-r2-000-0", "canary-r2-000-1"]
    vocabulary = {w for t in ls_train.transcripts for w in t.split()}
    assert not vocabulary & {w for c in canaries for w in c.text.split()}
    assert summarize(data)["canary_utterances"] == 2


def test_flac_is_lossless_and_mp3_is_not():
    voice = canary_voice(0, "mp3")
    flac = synthesize("tepa naga", voice, speedup=2.0, audio_format="flac", seed=0)
    again = synthesize("tepa naga", voice, speedup=2.0, audio_format="flac", seed=0)
    mp3 = synthesize("tepa naga", voice, speedup=2.0, audio_format="mp3", seed=0)
    np.testing.assert_array_equal(flac, again)
    assert abs(len(mp3) - len(flac)) < 0.02 * len(flac)
    assert not np.array_equal(mp3[: len(flac)], flac[: len(mp3)])


@pytest.mark.parametrize("audio_format", ["flac", "mp3"])
def test_the_speedup_shortens_the_audio_by_its_factor(audio_format):
    voice = canary_voice(0, audio_format)
    texts = ["tepa naga", "fito ruvo", "kemu dalo"]

    def seconds(speedup):
        return sum(
            len(synthesize(t, voice, speedup=speedup, audio_format=audio_format, seed=1))
            for t in texts
        )

    normal = seconds(1.0)
    for factor in (2.0, 4.0):
        assert normal / seconds(factor) == pytest.approx(factor, rel=0.15)


@pytest.mark.parametrize("audio_format", ["flac", "mp3"])
def test_the_default_speedup_leaves_ctc_a_margin_and_3x_would_not(cv_train, audio_format):
    tokenizer = CharTokenizer()
    for speedup, has_margin in ((UtteranceCanarySpec.speedup, True), (3.0, False)):
        spec = UtteranceCanarySpec(users=2, speedup=speedup)
        canaries = make_canaries(spec, cv_train, audio_format=audio_format)
        ratios = [c.seconds / 0.03 / ctc_frames_needed(tokenizer.encode(c.text)) for c in canaries]
        assert (min(ratios) >= 1.3) is has_margin, (speedup, min(ratios))
        if has_margin:
            check_transcribable(canaries, 0.03, tokenizer)


def test_check_transcribable_refuses_an_absurd_speedup(cv_train):
    spec = UtteranceCanarySpec(per_repeat=1, repeats=(1,), users=1, heldout=0, speedup=12.0)
    canaries = make_canaries(spec, cv_train, audio_format="mp3")
    with pytest.raises(ValueError, match=r"canary-r1-000 .* < \d+ needed.*utterances\.speedup"):
        check_transcribable(canaries, 0.03, CharTokenizer())


def test_ctc_frames_needed_counts_repeated_pairs():
    assert ctc_frames_needed(np.array([1, 1, 2, 2, 2, 3])) == 6 + 3
    assert ctc_frames_needed(CharTokenizer().encode("tepa naga")) == 9


def test_write_manifest(tmp_path, cv_canaries):
    path = tmp_path / "run" / "canaries.json"
    write_manifest(path, cv_canaries)
    entries = json.loads(path.read_text())
    assert entries[2] == {
        "id": "canary-r3-000",
        "text": cv_canaries[2].text,
        "repeats": 3,
        "user": cv_canaries[2].user,
        "seconds": round(len(cv_canaries[2].audio) / 16_000, 4),
    }
    assert entries[-1]["user"] is None and entries[-1]["repeats"] == 0
    assert [p.name for p in path.parent.iterdir()] == ["canaries.json"]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"per_repeat": 0}, r"config\.audit\.utterances\.per_repeat=0 must be >= 1"),
        ({"repeats": (1, 0)}, r"config\.audit\.utterances\.repeats=\(1, 0\) must be .* > 0"),
        ({"repeats": ()}, r"config\.audit\.utterances\.repeats=\(\) must be"),
        ({"speedup": 1.0}, r"config\.audit\.utterances\.speedup=1\.0 must be > 1"),
        ({"speedup": 0.5}, r"config\.audit\.utterances\.speedup=0\.5 must be > 1"),
        ({"users": 5}, r"config\.audit\.utterances\.users=5 exceeds the 3 training users"),
        ({"users": 13}, r"users=13 exceeds the 12 inserted canaries"),
        ({"users": None}, r"users=None \(one user per inserted canary: 12\) exceeds the 3 tr"),
        ({"users": 0}, r"config\.audit\.utterances\.users=0 must be >= 1"),
        ({"heldout": -1}, r"config\.audit\.utterances\.heldout=-1 must be >= 0"),
    ],
)
def test_bad_settings_name_the_field(cv_train, changes, message):
    spec = dataclasses.replace(UtteranceCanarySpec(users=2), **changes)
    with pytest.raises(ValueError, match=message):
        make_canaries(spec, cv_train, audio_format="mp3")


def test_an_unknown_audio_format_is_refused(cv_train):
    with pytest.raises(ValueError, match=r"audio_format='wav' is not one of \['flac', 'mp3'\]"):
        make_canaries(UtteranceCanarySpec(users=2), cv_train, audio_format="wav")


def _dataset(users: list[str]) -> FederatedDataset:
    return FederatedDataset.from_source(
        [
            {
                "audio": np.zeros(1600, np.int16),
                "user_id": u,
                "utterance_id": f"u{i}",
                "transcript": "a",
            }
            for i, u in enumerate(users)
        ]
    )


def test_users_that_cannot_be_identified_are_refused(cv_train):
    spec = UtteranceCanarySpec(per_repeat=1, repeats=(1,), users=1)
    with pytest.raises(ValueError, match=r"2 training utterance\(s\) have an empty user id"):
        make_canaries(spec, _dataset(["a", "", ""]), audio_format="mp3")
    with pytest.raises(ValueError, match=r"1 user\(s\).*need per-user data.*ids are missing"):
        make_canaries(spec, cv_train.subset_users(cv_train.users[:1]), audio_format="mp3")


def test_insert_refuses_canaries_of_another_split(cv_train, cv_canaries):
    stranger = dataclasses.replace(cv_canaries[0], user="nobody")
    with pytest.raises(ValueError, match="canary-r1-000 belongs to user 'nobody'"):
        insert(cv_train, [stranger])
