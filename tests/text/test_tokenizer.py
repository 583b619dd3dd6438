"""Character tokenizer and en/fr/de normalization."""

import logging

import numpy as np
import pytest

from fl_dp_asr.text import BLANK_ID, VOCAB_SIZE, VOCABULARY, CharTokenizer, normalize


def test_vocabulary_is_blank_letters_space_apostrophe_hyphen():
    assert VOCAB_SIZE == 30 and BLANK_ID == 0 and VOCABULARY[0] == "<blank>"
    assert "".join(VOCABULARY[1:27]) == "abcdefghijklmnopqrstuvwxyz"
    assert VOCABULARY[27:] == (" ", "'", "-")


def test_encode_decode_round_trip_never_emits_blank():
    tok = CharTokenizer()
    text = "it's a well-known fact"
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.min() > BLANK_ID and ids.max() < VOCAB_SIZE
    assert tok.decode(ids) == text
    assert tok.decode(np.concatenate([[0], ids[:2], [0, 0], ids[2:]])) == text  # blanks skipped
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([30])


@pytest.mark.parametrize(
    "language,raw,expected",
    [
        ("en", "Hello, World!  “Quoted” — dash…", "hello world quoted dash"),
        ("en", "Don’t stop; 'tis students' - fine", "don't stop 'tis students' fine"),
        (
            "fr",
            "L’été à Noël, ça coûte «très» cher ; Œuvre, Lætitia",
            "l'ete a noel ca coute tres cher oeuvre laetitia",
        ),
        ("de", "Straße, Müller, GRÖSSE, Übermäßig", "strasse mueller groesse uebermaessig"),
        ("en", "Müller's café naïve", "muller's cafe naive"),  # ä→a outside German
        ("en", "rock-n-roll -- x-", "rock-n-roll x"),
    ],
)
def test_normalization(language, raw, expected):
    result = normalize(raw, language)
    assert result.text == expected and result.dropped == ""


def test_unknown_symbols_drop_error_report(caplog):
    assert normalize("Room 101 & more", "en", "drop") == type(normalize(""))("room more", "101&")
    with pytest.raises(ValueError, match="unknown symbols '100%'"):
        normalize("100%", on_unknown="error")
    tok = CharTokenizer(on_unknown="report")
    with caplog.at_level(logging.WARNING):
        assert tok.decode(tok.encode("A1 b2")) == "a b"
        tok.encode("c1")
    assert tok.dropped == {"1": 2, "2": 1}
    assert len([r for r in caplog.records if "unknown symbols" in r.getMessage()]) == 1
    quiet = CharTokenizer(on_unknown="drop")
    quiet.encode("x9")
    assert quiet.dropped == {"9": 1}  # counted even when dropping quietly
    with pytest.raises(ValueError, match="on_unknown"):
        CharTokenizer(on_unknown="ignore")


def test_decode_batch_uses_lengths():
    tok = CharTokenizer()
    ids = np.zeros((2, 6), np.int32)
    ids[0, :2] = tok.encode("hi")
    ids[1, :3] = tok.encode("yes")
    assert tok.decode_batch(ids, np.array([2, 3])) == ["hi", "yes"]
