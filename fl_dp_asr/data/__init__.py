"""Speech data: local corpora as TFDS datasets, the synthetic corpus, federated cohorts.

See docs/guides/data.md. Entry points for the trainers::

    load_split(name, config, split, manual_dir=..., data_dir=...)      -> data source
    load_federated(name, config, split, manual_dir=..., data_dir=...)  -> FederatedDataset
    pack_cohort(dataset, users, tokenize=..., local_steps=..., batch_size=..., buckets=...,
                seed=..., round_index=...)                             -> cohort block
    CohortStream(dataset, sampler, tokenize, buckets, ...).block(round) -> cohort block
    iterate_batches(dataset, batch_size=..., tokenize=..., buckets=...) -> batches [B, ...]
    Prefetcher(iterable, buffer_size=2)
    PaddingBuckets()     # the cuts a local step runs on (make_client_update(..., buckets=))
"""

from fl_dp_asr.data.builders import (
    BUILDERS,
    CommonVoiceLocal,
    LibrispeechLocal,
    get_builder,
    load_federated,
    load_split,
    prepare,
)
from fl_dp_asr.data.cohorts import CohortStream, cohort_summary
from fl_dp_asr.data.errors import (
    CohortPackingError,
    CorruptAudioError,
    DataError,
    EmptyTranscriptError,
    LayoutError,
    MissingTranscriptError,
    SchemaError,
    TranscriptError,
    UnsupportedCharactersError,
)
from fl_dp_asr.data.federated import (
    FederatedDataset,
    LengthBuckets,
    client_steps,
    epoch_batches,
    iterate_batches,
    make_batch,
    pack_cohort,
)
from fl_dp_asr.data.padding import PaddingBuckets
from fl_dp_asr.data.prefetch import Prefetcher

__all__ = [
    "BUILDERS",
    "CohortPackingError",
    "CohortStream",
    "CommonVoiceLocal",
    "CorruptAudioError",
    "DataError",
    "EmptyTranscriptError",
    "FederatedDataset",
    "LayoutError",
    "LengthBuckets",
    "LibrispeechLocal",
    "MissingTranscriptError",
    "PaddingBuckets",
    "Prefetcher",
    "SchemaError",
    "TranscriptError",
    "UnsupportedCharactersError",
    "client_steps",
    "cohort_summary",
    "epoch_batches",
    "get_builder",
    "iterate_batches",
    "load_federated",
    "load_split",
    "make_batch",
    "pack_cohort",
    "prepare",
]
