"""Memorization audit: does the trained model give back what a user said?

Canary utterances (random pseudo-word texts spoken by espeak-ng and sped up) are inserted
``r`` times into chosen training users' data; held-out canaries of the same kind never are.
A model that transcribes the inserted ones much better than the held-out ones has memorized
them (Wang, Thakkar, Mathews, arXiv 2310.11739; Carlini et al., arXiv 1802.08232)::

    spec = UtteranceCanarySpec(per_repeat=4, repeats=(1, 4, 16), users=4)
    canaries = make_canaries(spec, train, audio_format="mp3")   # Common Voice layout
    check_transcribable(canaries, model_config.frame_seconds, CharTokenizer())
    train = insert(train, canaries)                             # a new FederatedDataset
    write_manifest(workdir / "canaries.json", canaries)
"""

from fl_dp_asr.memorization.utterances import (
    AUDIO_FORMATS,
    CANARY_PREFIX,
    CanarySource,
    UtteranceCanary,
    UtteranceCanarySpec,
    canary_voice,
    check_transcribable,
    corpus_vocabulary,
    ctc_frames_needed,
    espeak_rate,
    insert,
    make_canaries,
    random_texts,
    synthesize,
    write_manifest,
)

__all__ = [
    "AUDIO_FORMATS",
    "CANARY_PREFIX",
    "CanarySource",
    "UtteranceCanary",
    "UtteranceCanarySpec",
    "canary_voice",
    "check_transcribable",
    "corpus_vocabulary",
    "ctc_frames_needed",
    "espeak_rate",
    "insert",
    "make_canaries",
    "random_texts",
    "synthesize",
    "write_manifest",
]
