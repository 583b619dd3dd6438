"""Machinery both trainers use (big_vision's ``utils``): when periodic work is due, the data
and evaluation batches, models and optimizers from a config, stop signals, the summary.

The trainers (``experiments/train_central.py``, ``experiments/train_fl.py``) are flat loops
over these pieces; their configs share the ``data.*`` and ``model.*`` sections read here.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import signal
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
import optax

from fl_dp_asr.data import builders, federated, synthetic
from fl_dp_asr.data.errors import LayoutError
from fl_dp_asr.fl import distributed, server
from fl_dp_asr.models import asr
from fl_dp_asr.models.config import ModelConfig, get_model_config
from fl_dp_asr.text.tokenizer import CharTokenizer
from fl_dp_asr.train.checkpoint import load_model_checkpoint

PyTree = Any


def itstime(step: int, every: int | None, last_step: int) -> bool:
    """Whether periodic work is due after ``step``: every ``every`` steps and at the last.

    >>> [s for s in range(1, 8) if itstime(s, 3, last_step=7)]
    [3, 6, 7]
    """
    return step == last_step or (every is not None and every != 0 and step % every == 0)


# ------------------------------------------------------------------ data


class Data(NamedTuple):
    """The splits of a run.

    Attributes:
        train: training utterances grouped by user (filtered by ``data.min/max_seconds``,
            the first ``data.max_users`` users).
        eval: held-out utterances (speakers disjoint from ``train``).
        eval_batches: ``eval`` as batches ``[eval.batch_size, ...]`` sorted by length, kept
            in memory (evaluated many times).
        buckets: padded lengths fitted to ``train``.
    """

    train: federated.FederatedDataset
    eval: federated.FederatedDataset
    eval_batches: list[dict[str, Any]]
    buckets: federated.LengthBuckets


def load_data(
    data: ml_collections.ConfigDict,
    tokenizer: CharTokenizer,
    eval_batch_size: int,
    check_train: Callable[[federated.FederatedDataset], Any] | None = None,
) -> Data:
    """The training and held-out splits of the ``data`` config section.

    The corpus is ``data.manual_dir`` (:func:`corpus_dir`: the synthetic corpus is generated
    first only where ``data.synthetic_dir`` says it lives). In a multi-process run process 0
    prepares the TFDS data (and the corpus) first, then the others read it.

    Args:
        data: the ``data`` section (``experiments/configs/common.py``).
        tokenizer: encodes the transcripts (padded label lengths).
        eval_batch_size: utterances per evaluation batch.
        check_train: called with the (filtered) training split as soon as it is loaded,
            before the held-out split and the batches are prepared: a config error that
            needs the training users (a cohort larger than the population) stops the run
            early.

    Raises:
        LayoutError: ``data.manual_dir`` is not a directory (and not the synthetic corpus's).
        ValueError: the held-out split has speakers of the training split.
    """
    manual_dir = distributed.chief_first(lambda: corpus_dir(data))

    def load(config: str, split: str) -> federated.FederatedDataset:
        return _load_split(data, manual_dir, config, split)

    train_set = distributed.chief_first(lambda: load(data.train_config, data.train_split))
    if data.min_seconds is not None or data.max_seconds is not None:
        train_set = train_set.filter(
            min_seconds=data.min_seconds or 0.0, max_seconds=data.max_seconds or math.inf
        )
    if data.max_users is not None:
        if not data.max_users >= 1:
            raise ValueError(f"config.data.max_users={data.max_users} must be >= 1 (or None).")
        train_set = train_set.subset_users(train_set.users[: data.max_users])
    if check_train is not None:
        check_train(train_set)
    eval_set = distributed.chief_first(lambda: load(data.eval_config, data.eval_split))
    overlap = set(train_set.users) & set(eval_set.users)
    if overlap:
        raise ValueError(
            f"evaluation speakers also in training: {sorted(overlap)[:5]} "
            f"(config.data.eval_config={data.eval_config!r}, "
            f"eval_split={data.eval_split!r})"
        )
    buckets = federated.LengthBuckets.for_dataset(train_set, tokenizer.encode, data.num_buckets)
    eval_buckets = federated.LengthBuckets.for_dataset(eval_set, tokenizer.encode, data.num_buckets)
    eval_batches = list(
        federated.iterate_batches(
            eval_set, batch_size=eval_batch_size, tokenize=tokenizer.encode, buckets=eval_buckets
        )
    )
    return Data(train_set, eval_set, eval_batches, buckets)


def _load_split(
    data: ml_collections.ConfigDict, manual_dir: str | None, config: str, split: str
) -> federated.FederatedDataset:
    return builders.load_federated(
        data.name,
        config,
        split,
        manual_dir=manual_dir,
        data_dir=data.data_dir,
        progress=False,
        skip_bad_files=data.skip_bad_files,
    )


def prepare_data(data: ml_collections.ConfigDict) -> None:
    """What :func:`load_data` reads, made ready without reading the audio: the corpus
    (:func:`corpus_dir`), the TFDS datasets and the user indexes of the training and held-out
    splits. For a parent process that starts workers which would otherwise each find them
    missing and write them into the same directories at once.

    Raises:
        LayoutError: as :func:`corpus_dir`.
    """
    manual_dir = corpus_dir(data)
    for config, split in (
        (data.train_config, data.train_split),
        (data.eval_config, data.eval_split),
    ):
        _load_split(data, manual_dir, config, split)


def corpus_dir(data: ml_collections.ConfigDict) -> str | None:
    """The corpus directory of the ``data`` section, for the TFDS builders.

    A named directory is that directory: ``data.manual_dir`` must exist, except where the
    config says the synthetic corpus lives (``data.synthetic_dir``, e.g. the demo's
    ``data/synthetic``), where the corpus is generated if it is missing. An empty
    ``manual_dir`` (``--config.data.manual_dir=``) uses only the dataset already prepared in
    ``data.data_dir``.

    Raises:
        LayoutError: ``data.manual_dir`` is not a directory; nothing is created there.
    """
    if not data.manual_dir:
        return None
    manual_dir = pathlib.Path(data.manual_dir)
    if data.synthetic_dir and manual_dir.resolve() == pathlib.Path(data.synthetic_dir).resolve():
        if not (manual_dir / synthetic.MANIFEST).exists():
            print(f"Generating the synthetic corpus in {manual_dir} ...", flush=True)
            synthetic.generate_corpus(manual_dir, synthetic.sized_config(seed=data.corpus_seed))
    elif not manual_dir.is_dir():
        builder = builders.BUILDERS.get(data.name)
        layout = builder.MANUAL_DOWNLOAD_INSTRUCTIONS if builder else ""
        synthetic_hint = (
            f" (the synthetic corpus is generated only in config.data.synthetic_dir"
            f"={data.synthetic_dir!r})"
            if data.synthetic_dir
            else ""
        )
        raise LayoutError(
            f"config.data.manual_dir={data.manual_dir!r} is not a directory{synthetic_hint}: "
            f"point it at the {data.name} corpus, or set it empty to use only the dataset "
            f"prepared in config.data.data_dir={data.data_dir!r}. {layout}"
        )
    return str(manual_dir)


# ------------------------------------------------------------------ models and optimizers


def model_config_from(model: ml_collections.ConfigDict) -> ModelConfig:
    """The named ``model.size`` with the ``model.*`` fields that are not None applied."""
    overrides = {k: v for k, v in model.items() if k != "size" and v is not None}
    if "spec_augment_enabled" in overrides:
        overrides["spec_augment"] = {"enabled": overrides.pop("spec_augment_enabled")}
    return get_model_config(model.size, **overrides)


def load_seed_model(
    init_checkpoint: str | None, model: ml_collections.ConfigDict, key: jax.Array
) -> tuple[ModelConfig, PyTree, str]:
    """Model config, parameters and where they came from: ``init_checkpoint`` (a trainer's
    checkpoint directory) if set, else fresh parameters of ``model`` drawn with ``key``.

    ``None`` or ``""`` mean "from scratch" (a string field cannot be set to None on the
    command line: ``--config.init_checkpoint=`` does it)."""
    if not init_checkpoint:
        model_config = model_config_from(model)
        return model_config, asr.init_params(model_config, key), "scratch"
    if not os.path.isdir(init_checkpoint):
        raise FileNotFoundError(
            f"config.init_checkpoint={init_checkpoint!r} is not a directory; train the seed "
            "model first (experiments/train_central.py), or train from scratch with "
            "--config.init_checkpoint= (empty)."
        )
    model_config, params, step = load_model_checkpoint(init_checkpoint)
    return model_config, params, f"{init_checkpoint} (step {step})"


def learning_rate_schedule(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warm-up to ``opt.learning_rate``, then cosine decay to ``end_fraction`` of it."""
    warmup = min(opt.warmup_steps, max(num_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=opt.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1),
        end_value=opt.learning_rate * opt.end_fraction,
    )


def optimizer_from_config(
    opt: ml_collections.ConfigDict, num_steps: int
) -> optax.GradientTransformation:
    """The central optimizer: ``opt.name`` ``"lars"`` (the paper's) or ``"adam"`` (AdamW),
    on :func:`learning_rate_schedule`, after global gradient clipping to
    ``opt.grad_clip_norm`` unless it is None."""
    schedule = learning_rate_schedule(opt, num_steps)
    if opt.name == "lars":
        base = optax.lars(
            schedule,
            weight_decay=opt.weight_decay,
            momentum=opt.momentum,
            trust_coefficient=opt.trust_coefficient,
        )
    elif opt.name == "adam":
        base = optax.adamw(
            schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay
        )
    else:
        raise ValueError(f"config.optimizer.name={opt.name!r}: use 'lars' or 'adam'")
    if opt.grad_clip_norm is None:
        return base
    return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), base)


def server_optimizer_from_config(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The FL server optimizer of the ``server`` section (:mod:`fl_dp_asr.fl.server`) on
    the round's layout of the ASR parameters (``asr.PARAM_LAYOUT``)."""
    return server.make_server_optimizer(
        cfg.optimizer,
        cfg.learning_rate,
        decay_begin=cfg.decay_begin,
        decay_every=cfg.decay_every,
        decay_rate=cfg.decay_rate,
        layout=asr.PARAM_LAYOUT,
    )


# ------------------------------------------------------------------ the run


class StopSignals:
    """A context in which SIGINT/SIGTERM do not kill the process but set :attr:`received`
    (the signal's name), for the loop to save and stop cleanly; the previous handlers are
    restored on exit."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        self.received = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        self._previous = {
            s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)
        }
        return self

    def __exit__(self, *exc_info) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def chief_print(enabled: bool) -> Callable[[str], None]:
    """``print`` (flushed) on the process that reports (process 0), a no-op elsewhere."""

    def log(message: str) -> None:
        if enabled:
            print(message, flush=True)

    return log


def write_json(path: str, value: Any) -> None:
    """Writes ``value`` as indented JSON atomically (a reader never sees half a file)."""
    write_text(path, json.dumps(value, indent=2))


def write_text(path: str, text: str) -> None:
    """Writes ``text`` atomically: to ``path.tmp``, then renamed over ``path``."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
