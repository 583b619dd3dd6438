"""Text side of ASR: character tokenizer + normalization, CTC decoding, WER/CER."""

from fl_dp_asr.text.ctc import beam_search_batch, greedy_decode, prefix_beam_search
from fl_dp_asr.text.metrics import ErrorCounts, corpus_cer, corpus_wer
from fl_dp_asr.text.tokenizer import (
    BLANK_ID,
    VOCAB_SIZE,
    VOCABULARY,
    CharTokenizer,
    Normalized,
    normalize,
)

__all__ = [
    "BLANK_ID",
    "VOCABULARY",
    "VOCAB_SIZE",
    "CharTokenizer",
    "ErrorCounts",
    "Normalized",
    "beam_search_batch",
    "corpus_cer",
    "corpus_wer",
    "greedy_decode",
    "normalize",
    "prefix_beam_search",
]
