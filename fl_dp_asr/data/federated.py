"""Federated view of a speech dataset and packing of cohorts into fixed-shape client blocks.

:class:`FederatedDataset` groups the utterances of a random-access data source (what
:func:`fl_dp_asr.data.load_split` returns) by user. It holds only ids, lengths and
transcripts; audio is read from the source when a cohort or batch is packed.

:func:`pack_cohort` produces the cohort block of ``docs/CONTRACTS.md``::

    batches:     {audio int16, audio_lengths int32, labels int32, label_lengths int32,
                  mask float32} with leaves [clients, local_steps, batch, ...]
    step_mask:   float32 [clients, local_steps]
    client_mask: float32 [clients]

Local data per client follows the paper: a fixed number of local steps, each on a batch of at
most ``batch_size`` utterances (optionally at most ``max_batch_seconds`` of audio). A client
shuffles its utterances, cuts them into batches, and starts a new shuffled pass whenever it
runs out, so clients with little data cycle through it (a batch never holds the same
utterance twice; the last batch of a pass may be smaller, with padding rows masked). The
draw is a pure function of ``(seed, round_index, user id)``.

:func:`make_batch` gives central-training and evaluation batches ``[B, ...]`` in the same
format (:func:`epoch_batches` the rows of each training batch, :func:`iterate_batches` the
evaluation batches). Padded shapes come from :class:`LengthBuckets`, a few sizes
for ``max_samples`` and ``max_label_len``, so a jitted step compiles a bounded number of times.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import os
import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import tqdm

from fl_dp_asr.data.errors import CohortPackingError, DataError
from fl_dp_asr.data.layouts import SAMPLE_RATE, normalize_gender

Tokenize = Callable[[str], np.ndarray]
Batch = dict[str, np.ndarray]
_INDEX_CHUNK = 256
#: Per-row strings of the cached index: constructor argument → npz name.
_INDEX_FIELDS = {
    "user_ids": "users",
    "utterance_ids": "utterances",
    "transcripts": "transcripts",
    "genders": "genders",
}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _pack_strings(strings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [s.encode("utf-8") for s in strings]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), np.uint8), offsets


def _unpack_strings(data: np.ndarray, offsets: np.ndarray) -> list[str]:
    raw = data.tobytes()
    return [raw[a:b].decode("utf-8") for a, b in itertools.pairwise(offsets)]


class FederatedDataset:
    """Utterances of a data source grouped by user (users = FL clients).

    Rows ``0 .. len(self) - 1`` index this view's utterances; ``source_indices[row]`` is the
    example's index in the data source. Views made by :meth:`subset_users` and
    :meth:`filter` share the source.

    Args:
        source: random access to examples: ``len(source)``, ``source[i]`` → dict with at least
            ``audio`` (int16 [samples], 16 kHz); e.g. a TFDS ``ArrayRecordDataSource``.
        source_indices: int64 [N] example index in ``source`` of each row.
        user_ids, utterance_ids, transcripts: N strings.
        num_samples: int64 [N] audio length of each row (16 kHz samples).
        genders: N strings, normalized to :data:`fl_dp_asr.data.layouts.GENDERS` (whatever
            corpus and builder version they come from); None: all unknown (``""``).
    """

    def __init__(
        self,
        source: Any,
        *,
        source_indices: np.ndarray,
        user_ids: Sequence[str],
        utterance_ids: Sequence[str],
        transcripts: Sequence[str],
        num_samples: np.ndarray,
        genders: Sequence[str] | None = None,
    ):
        self.source = source
        self.source_indices = np.asarray(source_indices, np.int64)
        self.user_of_row = list(user_ids)
        self.utterance_ids = list(utterance_ids)
        self.transcripts = list(transcripts)
        self.num_samples = np.asarray(num_samples, np.int64)
        self.genders = (
            [normalize_gender(g) for g in genders]
            if genders is not None
            else [""] * len(self.user_of_row)
        )
        sizes = {
            len(self.source_indices),
            len(self.user_of_row),
            len(self.utterance_ids),
            len(self.transcripts),
            len(self.num_samples),
            len(self.genders),
        }
        if len(sizes) != 1:
            raise ValueError(f"per-utterance arrays differ in length: {sorted(sizes)}")
        rows_of: dict[str, list[int]] = {}
        for row, user in enumerate(self.user_of_row):
            rows_of.setdefault(user, []).append(row)
        self.users: tuple[str, ...] = tuple(sorted(rows_of))
        self._rows_of = {user: np.asarray(rows, np.int64) for user, rows in rows_of.items()}

    # Construction ----------------------------------------------------------------------------
    @classmethod
    def from_source(
        cls,
        source: Any,
        *,
        cache_path: str | os.PathLike[str] | None = None,
        progress: bool = False,
    ) -> FederatedDataset:
        """Indexes ``source`` (one pass that reads every example), or loads a cached index.

        Args:
            source: see the class docstring; examples need ``audio``, ``user_id``,
                ``utterance_id`` and ``transcript`` (str or bytes), and may have ``gender``.
            cache_path: ``.npz`` file to load the index from / save it to (written
                atomically). Ignored when its length differs from ``len(source)`` or it
                lacks a field (written by an older version).
            progress: show a progress bar while indexing.
        """
        if cache_path is not None and pathlib.Path(cache_path).is_file():
            with np.load(cache_path) as cached:
                if set(_INDEX_FIELDS) <= set(cached.files) and len(cached["num_samples"]) == len(
                    source
                ):
                    return cls(
                        source,
                        source_indices=np.arange(len(source)),
                        num_samples=cached["num_samples"],
                        **{
                            field: _unpack_strings(cached[name], cached[f"{name}_offsets"])
                            for field, name in _INDEX_FIELDS.items()
                        },
                    )
        user_ids, utterance_ids, transcripts, genders = [], [], [], []
        num_samples = np.zeros(len(source), np.int64)
        bar = tqdm.tqdm(total=len(source), desc="indexing users", unit="utt", disable=not progress)
        for start in range(0, len(source), _INDEX_CHUNK):
            indices = list(range(start, min(start + _INDEX_CHUNK, len(source))))
            examples = (
                source.__getitems__(indices)
                if hasattr(source, "__getitems__")
                else [source[i] for i in indices]
            )
            for i, example in zip(indices, examples):
                user_ids.append(_text(example["user_id"]))
                utterance_ids.append(_text(example["utterance_id"]))
                transcripts.append(_text(example["transcript"]))
                genders.append(_text(example.get("gender", "")))
                num_samples[i] = len(example["audio"])
            bar.update(len(indices))
        bar.close()
        dataset = cls(
            source,
            source_indices=np.arange(len(source)),
            user_ids=user_ids,
            utterance_ids=utterance_ids,
            transcripts=transcripts,
            num_samples=num_samples,
            genders=genders,
        )
        if cache_path is not None:
            dataset._save_index(pathlib.Path(cache_path))
        return dataset

    def _save_index(self, path: pathlib.Path) -> None:
        arrays: dict[str, Any] = {"num_samples": self.num_samples}
        strings = {
            "user_ids": self.user_of_row,
            "utterance_ids": self.utterance_ids,
            "transcripts": self.transcripts,
            "genders": self.genders,
        }
        for field, name in _INDEX_FIELDS.items():
            arrays[name], arrays[f"{name}_offsets"] = _pack_strings(strings[field])
        partial = path.with_name(path.name + ".partial.npz")
        np.savez(partial, **arrays)
        os.replace(partial, path)

    def _view(self, rows: np.ndarray) -> FederatedDataset:
        rows = np.sort(np.asarray(rows, np.int64))
        return FederatedDataset(
            self.source,
            source_indices=self.source_indices[rows],
            user_ids=[self.user_of_row[r] for r in rows],
            utterance_ids=[self.utterance_ids[r] for r in rows],
            transcripts=[self.transcripts[r] for r in rows],
            num_samples=self.num_samples[rows],
            genders=[self.genders[r] for r in rows],
        )

    # Users -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.source_indices)

    @property
    def num_users(self) -> int:
        return len(self.users)

    def rows_of(self, user: str) -> np.ndarray:
        """Rows (int64) of ``user``'s utterances; CohortPackingError for an unknown user."""
        try:
            return self._rows_of[user]
        except KeyError:
            raise CohortPackingError(
                f"user {user!r} is not in this dataset ({self.num_users} users)"
            ) from None

    def user_genders(self) -> list[str]:
        """The gender of each user, in the order of :attr:`users`: the most frequent known
        one among the user's utterances, ``""`` if none is known."""
        genders = []
        for user in self.users:
            known = collections.Counter(self.genders[r] for r in self._rows_of[user])
            known.pop("", None)
            genders.append(known.most_common(1)[0][0] if known else "")
        return genders

    def user_num_utterances(self) -> np.ndarray:
        """int64 [num_users]: utterances of each user, in the order of :attr:`users`."""
        return np.asarray([len(self._rows_of[u]) for u in self.users], np.int64)

    def durations(self) -> np.ndarray:
        """float64 [N]: seconds of each row."""
        return self.num_samples / SAMPLE_RATE

    @property
    def hours(self) -> float:
        return float(self.num_samples.sum() / SAMPLE_RATE / 3600)

    def subset_users(self, users: Sequence[str]) -> FederatedDataset:
        """The view holding only ``users``' utterances."""
        rows = [self.rows_of(u) for u in users]
        return self._view(np.concatenate(rows) if rows else np.zeros(0, np.int64))

    def filter(
        self, *, min_seconds: float = 0.0, max_seconds: float = float("inf")
    ) -> FederatedDataset:
        """The view without utterances shorter than ``min_seconds`` or longer than
        ``max_seconds``."""
        seconds = self.durations()
        return self._view(np.flatnonzero((seconds >= min_seconds) & (seconds <= max_seconds)))

    # Examples --------------------------------------------------------------------------------
    def audio(self, row: int) -> np.ndarray:
        """int16 [samples] waveform of ``row`` (read from the source)."""
        return np.asarray(self.source[int(self.source_indices[row])]["audio"], np.int16)

    def audios(self, rows: Sequence[int]) -> dict[int, np.ndarray]:
        """Waveforms of distinct ``rows``, read in one batch when the source supports it."""
        rows = sorted({int(r) for r in rows})
        indices = [int(self.source_indices[r]) for r in rows]
        examples = (
            self.source.__getitems__(indices)
            if hasattr(self.source, "__getitems__")
            else [self.source[i] for i in indices]
        )
        return {r: np.asarray(e["audio"], np.int16) for r, e in zip(rows, examples)}


# ---------------------------------------------------------------------------------------------
# Length buckets
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LengthBuckets:
    """Allowed padded sizes; a batch or cohort uses the smallest that fits its longest item.

    Attributes:
        max_samples: increasing audio lengths (16 kHz samples).
        max_label_len: increasing label lengths (tokens).
    """

    max_samples: tuple[int, ...] = tuple(s * SAMPLE_RATE for s in (4, 8, 16, 36))
    max_label_len: tuple[int, ...] = (64, 128, 256, 640)

    def __post_init__(self):
        for name in ("max_samples", "max_label_len"):
            sizes = getattr(self, name)
            if not sizes or list(sizes) != sorted(set(sizes)) or sizes[0] <= 0:
                raise ValueError(f"LengthBuckets.{name}={sizes} must be increasing and > 0")

    @classmethod
    def for_dataset(
        cls, dataset: FederatedDataset, tokenize: Tokenize, num_buckets: int = 3
    ) -> LengthBuckets:
        """Buckets whose largest sizes fit ``dataset``; each smaller one is half the next
        (audio rounded up to 0.1 s, labels to 8 tokens)."""
        longest_audio = int(dataset.num_samples.max(initial=SAMPLE_RATE))
        longest_label = max((len(tokenize(t)) for t in dataset.transcripts), default=8)

        def ladder(top: int, quantum: int) -> tuple[int, ...]:
            sizes = {-(-max(top >> k, 1) // quantum) * quantum for k in range(num_buckets)}
            return tuple(sorted(sizes))

        return cls(ladder(longest_audio, SAMPLE_RATE // 10), ladder(max(longest_label, 1), 8))

    def fit(self, num_samples: int, label_len: int) -> tuple[int, int]:
        """The smallest (max_samples, max_label_len) bucket sizes holding the given lengths."""
        if num_samples > self.max_samples[-1] or label_len > self.max_label_len[-1]:
            raise CohortPackingError(
                f"an utterance of {num_samples} samples ({num_samples / SAMPLE_RATE:.1f} s) "
                f"and {label_len} label tokens exceeds the largest bucket "
                f"({self.max_samples[-1]} samples, {self.max_label_len[-1]} tokens): add a "
                "larger bucket or drop long utterances with FederatedDataset.filter()."
            )
        samples = next(s for s in self.max_samples if s >= num_samples)
        labels = next(n for n in self.max_label_len if n >= label_len)
        return samples, labels


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------
def _empty_batch(shape: tuple[int, ...], max_samples: int, max_label_len: int) -> Batch:
    return {
        "audio": np.zeros((*shape, max_samples), np.int16),
        "audio_lengths": np.zeros(shape, np.int32),
        "labels": np.zeros((*shape, max_label_len), np.int32),
        "label_lengths": np.zeros(shape, np.int32),
        "mask": np.zeros(shape, np.float32),
    }


def _put(batch: Batch, where: tuple[int, ...], audio: np.ndarray, label: np.ndarray) -> None:
    batch["audio"][where][: len(audio)] = audio
    batch["audio_lengths"][where] = len(audio)
    batch["labels"][where][: len(label)] = label
    batch["label_lengths"][where] = len(label)
    batch["mask"][where] = 1.0


def _labels(
    dataset: FederatedDataset, rows: Sequence[int], tokenize: Tokenize
) -> dict[int, np.ndarray]:
    labels = {}
    for row in {int(r) for r in rows}:
        label = np.asarray(tokenize(dataset.transcripts[row]), np.int32)
        if label.ndim != 1 or len(label) == 0:
            raise DataError(
                f"tokenize({dataset.transcripts[row]!r}) (utterance "
                f"{dataset.utterance_ids[row]}) gave shape {label.shape}; expected a "
                "non-empty 1-D array of token ids"
            )
        labels[row] = label
    return labels


def make_batch(
    dataset: FederatedDataset,
    rows: Sequence[int],
    *,
    tokenize: Tokenize,
    buckets: LengthBuckets,
    batch_size: int | None = None,
) -> Batch:
    """One batch ``[B, ...]`` (CONTRACTS.md format) of the given rows.

    Args:
        dataset: the utterances.
        rows: rows of ``dataset``, at most ``batch_size``.
        tokenize: transcript → int32 token ids (no blank).
        buckets: padded sizes.
        batch_size: B; rows beyond ``len(rows)`` are padding (mask 0). Default ``len(rows)``.
    """
    batch_size = len(rows) if batch_size is None else batch_size
    if len(rows) > batch_size:
        raise ValueError(f"{len(rows)} rows do not fit batch_size={batch_size}")
    labels = _labels(dataset, rows, tokenize)
    max_samples, max_label_len = buckets.fit(
        int(max((dataset.num_samples[r] for r in rows), default=0)),
        max((len(v) for v in labels.values()), default=0),
    )
    audios = dataset.audios(rows)
    batch = _empty_batch((batch_size,), max_samples, max_label_len)
    for b, row in enumerate(rows):
        _put(batch, (b,), audios[int(row)], labels[int(row)])
    return batch


def iterate_batches(
    dataset: FederatedDataset, *, batch_size: int, tokenize: Tokenize, buckets: LengthBuckets
) -> Iterator[Batch]:
    """Evaluation batches over every utterance once, sorted by length (least padding); the
    last one padded, never dropped."""
    order = np.argsort(dataset.num_samples, kind="stable")
    for start in range(0, len(order), batch_size):
        yield make_batch(
            dataset,
            order[start : start + batch_size].tolist(),
            tokenize=tokenize,
            buckets=buckets,
            batch_size=batch_size,
        )


def epoch_batches(
    num_samples: np.ndarray, batch_size: int, seed: int, epoch: int, sort_window: int
) -> list[np.ndarray]:
    """Rows of every training batch of one epoch, a pure function of ``(seed, epoch)``.

    Shuffles, sorts by length inside windows of ``sort_window`` batches (less padding), then
    shuffles the batches. The last batch may be short (padded with mask 0 by
    :func:`make_batch`).

    Args:
        num_samples: int64 ``[N]`` audio length of each row (:attr:`FederatedDataset.num_samples`).
        batch_size: rows per batch.
        seed: experiment seed.
        epoch: epoch index.
        sort_window: batches per length-sorted window (≤ 1: shuffled only).

    Returns:
        int64 row arrays, ``⌈N / batch_size⌉`` of them, together holding every row once.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(num_samples))
    window = batch_size * max(sort_window, 1)
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        order[start : start + window] = chunk[np.argsort(num_samples[chunk], kind="stable")]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


# ---------------------------------------------------------------------------------------------
# Cohort blocks
# ---------------------------------------------------------------------------------------------
def _user_seed(user: str) -> int:
    return int.from_bytes(hashlib.blake2b(user.encode("utf-8"), digest_size=8).digest(), "little")


def _one_pass(
    rows: np.ndarray, num_samples: np.ndarray, batch_size: int, max_batch_samples: int | None
) -> list[list[int]]:
    batches: list[list[int]] = [[]]
    samples = 0
    for row in rows.tolist():
        full = len(batches[-1]) == batch_size or (
            max_batch_samples is not None
            and batches[-1]
            and samples + num_samples[row] > max_batch_samples
        )
        if full:
            batches.append([])
            samples = 0
        batches[-1].append(row)
        samples += int(num_samples[row])
    return batches


def client_steps(
    dataset: FederatedDataset,
    user: str,
    *,
    local_steps: int,
    batch_size: int,
    seed: int,
    round_index: int,
    max_batch_seconds: float | None = None,
    max_local_epochs: int | None = None,
) -> list[list[int]]:
    """Rows of each local step of ``user`` in round ``round_index`` (see the module docstring).

    Returns at most ``local_steps`` non-empty lists; fewer only when ``max_local_epochs`` stops
    the cycling (the remaining steps are padding).
    """
    rows = dataset.rows_of(user)
    rng = np.random.default_rng([seed, round_index, _user_seed(user)])
    max_batch_samples = None if max_batch_seconds is None else int(max_batch_seconds * SAMPLE_RATE)
    steps: list[list[int]] = []
    epoch = 0
    while len(steps) < local_steps and (max_local_epochs is None or epoch < max_local_epochs):
        steps.extend(
            _one_pass(rng.permutation(rows), dataset.num_samples, batch_size, max_batch_samples)
        )
        epoch += 1
    return steps[:local_steps]


def _plan_size(dataset: FederatedDataset, plan: list[list[int]]) -> tuple[int, int, int]:
    """(local steps, rows of the fullest batch, samples of the longest utterance) of a plan."""
    return (
        len(plan),
        max(map(len, plan), default=0),
        int(max((dataset.num_samples[r] for step in plan for r in step), default=0)),
    )


def pack_cohort(
    dataset: FederatedDataset,
    users: Sequence[str | None],
    *,
    tokenize: Tokenize,
    local_steps: int,
    batch_size: int,
    buckets: LengthBuckets,
    seed: int,
    round_index: int,
    num_clients: int | None = None,
    max_batch_seconds: float | None = None,
    max_local_epochs: int | None = None,
    keep: Sequence[int] | None = None,
    largest_first: bool = False,
) -> dict[str, Any]:
    """Packs a cohort into the fixed-shape client block of ``docs/CONTRACTS.md``.

    Args:
        dataset: the federated population.
        users: the cohort's user ids; ``None`` entries are padding clients.
        tokenize: transcript → int32 token ids (e.g. ``fl_dp_asr.text.CharTokenizer().encode``).
        local_steps: local steps per client (the paper: 10).
        batch_size: utterances per local batch (the padded B).
        buckets: padded sizes; the cohort uses the smallest bucket holding its longest item.
        seed: experiment seed; with ``round_index`` and the user id it fixes the local data.
        round_index: FL round.
        num_clients: padded number of clients (≥ ``len(users)``); default ``len(users)``.
        max_batch_seconds: also cap each local batch's audio (seconds); an utterance longer
            than the cap forms a batch alone.
        max_local_epochs: stop cycling after this many passes over a client's data (the
            remaining steps get ``step_mask`` 0); None cycles until ``local_steps``.
        keep: pack only these client slots, in this order (a process's part of a
            multi-process cohort, :func:`fl_dp_asr.fl.distributed.process_client_indices`);
            the bucket is still chosen from the whole cohort, so every part has the same
            shape, and only the kept clients' audio is read. None: all ``num_clients``.
        largest_first: order the users by decreasing (real local steps, rows of their
            fullest batch, longest utterance) before packing (ties keep the given order),
            so that neighbouring client slots need similar cuts of their batches
            (:class:`fl_dp_asr.data.PaddingBuckets`): the ``vectorized`` executor trains
            neighbours together. Slots (and ``keep``) refer to this order. False: as given.

    Returns:
        ``{"batches": {audio [C, L, B, S] int16, audio_lengths [C, L, B] int32,
        labels [C, L, B, N] int32, label_lengths [C, L, B] int32, mask [C, L, B] float32},
        "step_mask": [C, L] float32, "client_mask": [C] float32}``.

    Raises:
        CohortPackingError: unknown user, too many users, or an utterance beyond every bucket.
    """
    num_clients = len(users) if num_clients is None else num_clients
    if len(users) > num_clients:
        raise CohortPackingError(f"{len(users)} users do not fit num_clients={num_clients}")
    if local_steps < 1 or batch_size < 1:
        raise ValueError(f"local_steps={local_steps} and batch_size={batch_size} must be >= 1")
    plans = [
        []
        if user is None
        else client_steps(
            dataset,
            user,
            local_steps=local_steps,
            batch_size=batch_size,
            seed=seed,
            round_index=round_index,
            max_batch_seconds=max_batch_seconds,
            max_local_epochs=max_local_epochs,
        )
        for user in users
    ]
    if largest_first:
        order = sorted(range(len(users)), key=lambda i: _plan_size(dataset, plans[i]), reverse=True)
        users, plans = [users[i] for i in order], [plans[i] for i in order]
    users = list(users) + [None] * (num_clients - len(users))
    plans = list(plans) + [[]] * (num_clients - len(plans))
    used = [row for plan in plans for step in plan for row in step]
    labels = _labels(dataset, used, tokenize)
    max_samples, max_label_len = buckets.fit(
        int(max((dataset.num_samples[r] for r in used), default=0)),
        max((len(v) for v in labels.values()), default=0),
    )
    slots = range(num_clients) if keep is None else [int(c) for c in keep]
    if any(not 0 <= c < num_clients for c in slots):
        raise CohortPackingError(f"keep={list(slots)} names slots outside [0, {num_clients})")
    audios = dataset.audios([row for c in slots for step in plans[c] for row in step])
    batches = _empty_batch((len(slots), local_steps, batch_size), max_samples, max_label_len)
    step_mask = np.zeros((len(slots), local_steps), np.float32)
    client_mask = np.zeros(len(slots), np.float32)
    for c, slot in enumerate(slots):
        plan = plans[slot]
        client_mask[c] = float(users[slot] is not None)
        for s, step in enumerate(plan):
            step_mask[c, s] = 1.0
            for b, row in enumerate(step):
                _put(batches, (c, s, b), audios[row], labels[row])
    return {"batches": batches, "step_mask": step_mask, "client_mask": client_mask}
