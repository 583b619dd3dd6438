r"""Central (non-federated) training of the CTC seed model.

    python -m experiments.train_central --config experiments/configs/demo_central.py \
        --workdir runs/demo/central [--config.train.num_steps=2000 ...]

Loads the training and evaluation splits with :mod:`fl_dp_asr.data` (TFDS builders over a
local corpus; the synthetic espeak-ng corpus is generated first when
``config.data.synthesize_if_missing`` is set and the corpus is missing), trains with SpecAugment
and the optimizer of ``config.optimizer`` (LARS as in the paper, or Adam), evaluates greedy
WER/CER on held-out speakers, and saves orbax checkpoints in ``<workdir>/checkpoints``
(the seed model that ``experiments/train_fl.py`` starts from).

Resume order: the newest complete checkpoint of the work directory → ``config.init_checkpoint``
→ scratch. The data order and the PRNG key of step ``s`` (``fold_in(rng, s)``) depend only on
the seed and ``s``, so an interrupted run continues exactly. Metrics go to
``<workdir>/metrics.jsonl`` and TensorBoard (``<workdir>/tensorboard``).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags
from ml_collections import config_flags

from fl_dp_asr.data import builders, federated, prefetch, synthetic
from fl_dp_asr.models import asr
from fl_dp_asr.models.config import ModelConfig, get_model_config
from fl_dp_asr.text.tokenizer import CharTokenizer
from fl_dp_asr.train.checkpoint import Checkpointer, load_model_checkpoint
from fl_dp_asr.train.metrics import MetricWriter

PyTree = Any

# ------------------------------------------------------------------ optimizer


def make_schedule(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warm-up to ``opt.learning_rate``, then cosine decay to ``end_fraction`` of it."""
    warmup = min(opt.warmup_steps, max(num_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=opt.learning_rate, warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1), end_value=opt.learning_rate * opt.end_fraction)


def make_optimizer(opt: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """``opt.name``: ``"lars"`` (optax.lars, the paper's) or ``"adam"`` (AdamW)."""
    schedule = make_schedule(opt, num_steps)
    if opt.name == "lars":
        base = optax.lars(schedule, weight_decay=opt.weight_decay, momentum=opt.momentum,
                          trust_coefficient=opt.trust_coefficient)
    elif opt.name == "adam":
        base = optax.adamw(schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps,
                           weight_decay=opt.weight_decay)
    else:
        raise ValueError(f"config.optimizer.name={opt.name!r}: use 'lars' or 'adam'")
    if opt.grad_clip_norm:
        return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), base)
    return base


def model_config_from(model: ml_collections.ConfigDict) -> ModelConfig:
    """The named ``model.size`` with the ``model.*`` fields that are not None applied."""
    overrides = {k: v for k, v in model.items() if k != "size" and v is not None}
    if "spec_augment_enabled" in overrides:
        overrides["spec_augment"] = {"enabled": overrides.pop("spec_augment_enabled")}
    return get_model_config(model.size, **overrides)


# ------------------------------------------------------------------ data


def training_batches(dataset: federated.FederatedDataset, config: ml_collections.ConfigDict,
                     tokenize, buckets: federated.LengthBuckets,
                     start_step: int) -> Iterator[dict[str, np.ndarray]]:
    """The batch of every step from ``start_step`` on (epochs repeat forever)."""
    batch_size = config.train.batch_size
    steps_per_epoch = -(-len(dataset) // batch_size)
    epoch, index = divmod(start_step, steps_per_epoch)
    while True:
        batches = federated.epoch_batches(dataset.num_samples, batch_size, config.seed, epoch,
                                config.data.sort_window)
        for rows in batches[index:]:
            yield federated.make_batch(dataset, rows.tolist(), tokenize=tokenize,
                                       buckets=buckets, batch_size=batch_size)
        epoch, index = epoch + 1, 0


def load_data(config: ml_collections.ConfigDict, tokenizer: CharTokenizer):
    """Training set, evaluation batches (kept in memory) and their length buckets."""
    data = config.data
    manual_dir = pathlib.Path(data.manual_dir)
    if data.synthesize_if_missing and not (manual_dir / synthetic.MANIFEST).exists():
        print(f"Generating the synthetic corpus in {manual_dir} ...", flush=True)
        synthetic.generate_corpus(manual_dir, synthetic.sized_config(seed=data.corpus_seed))
    kwargs = dict(manual_dir=data.manual_dir, data_dir=data.data_dir, progress=False)
    train_set = builders.load_federated(data.name, data.train_config, data.train_split, **kwargs)
    eval_set = builders.load_federated(data.name, data.eval_config, data.eval_split, **kwargs)
    train_set = train_set.filter(min_seconds=data.min_seconds, max_seconds=data.max_seconds)
    overlap = set(train_set.users) & set(eval_set.users)
    if overlap:
        raise ValueError(f"evaluation speakers also in training: {sorted(overlap)[:5]} "
                         f"(config.data.eval_config={data.eval_config!r})")
    buckets = federated.LengthBuckets.for_dataset(train_set, tokenizer.encode, data.num_buckets)
    eval_buckets = federated.LengthBuckets.for_dataset(eval_set, tokenizer.encode,
                                                       data.num_buckets)
    eval_batches = list(federated.iterate_batches(
        eval_set, batch_size=config.eval.batch_size, tokenize=tokenizer.encode,
        buckets=eval_buckets))
    return train_set, eval_set, eval_batches, buckets


# ------------------------------------------------------------------ training


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) the central model.

    Returns:
        ``{"step", "dev_wer", "dev_cer", "minutes"}`` of the last evaluation.
    """
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    tokenizer = CharTokenizer(config.data.language)
    num_steps = config.train.num_steps

    # ---- data -----------------------------------------------------------------------------
    train_set, eval_set, eval_batches, buckets = load_data(config, tokenizer)
    print(f"train: {len(train_set)} utterances, {train_set.num_users} speakers, "
          f"{train_set.hours:.2f} h; eval: {len(eval_set)} utterances, {eval_set.num_users} "
          f"unseen speakers; buckets {buckets}", flush=True)

    # ---- model, optimizer, state: resume → init checkpoint → scratch ------------------------
    init_key, rng = jax.random.split(jax.random.key(config.seed))
    if config.init_checkpoint:
        model_config, params, _ = load_model_checkpoint(config.init_checkpoint)
        source = f"init checkpoint {config.init_checkpoint}"
    else:
        model_config = model_config_from(config.model)
        params = asr.init_params(model_config, init_key)
        source = "scratch"
    optimizer = make_optimizer(config.optimizer, num_steps)
    state = {"params": params, "opt_state": optimizer.init(params), "step": jnp.int32(0)}
    checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"),
                               max_to_keep=config.checkpoint.keep, best_metric="dev_cer")
    restored = checkpoints.restore_latest(jax.tree.map(jnp.asarray, state))
    if restored is not None:
        _, state, _ = restored
        source = f"{checkpoints.directory} step {int(state['step'])}"
    start_step = int(state["step"])
    print(f"model: {asr.count_params(state['params']) / 1e6:.2f} M parameters, from {source}",
          flush=True)

    # ---- the jitted step ------------------------------------------------------------------
    loss_fn = asr.make_loss_fn(model_config, train=True)
    schedule = make_schedule(config.optimizer, num_steps)

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state, batch):
        key = jax.random.fold_in(rng, state["step"])
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch, key)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        measurements = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                        "update_norm": optax.tree.norm(updates),
                        "param_norm": optax.tree.norm(params),
                        "learning_rate": schedule(state["step"]), **aux}
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, measurements

    def evaluate(step: int) -> dict[str, Any]:
        result = asr.evaluate(state["params"], model_config, eval_batches, max_examples=3)
        for reference, hypothesis in result.pop("examples"):
            print(f"    ref: {reference}\n    hyp: {hypothesis}")
        print(f"step {step:6d} | dev WER {100 * result['wer']:.1f} % CER "
              f"{100 * result['cer']:.1f} % loss/char {result['loss_per_token']:.3f}", flush=True)
        writer.write(step, {"eval": result, "elapsed_minutes": (time.time() - start) / 60})
        return result

    def save(step: int, result: dict[str, Any]) -> None:
        if step in checkpoints.all_steps():
            return
        meta = {"step": step, "model_config": model_config.to_dict(),
                "config": json.loads(config.to_json()),
                "dev": {k: result[k] for k in ("wer", "cer", "loss", "num_utterances")}}
        checkpoints.save(step, jax.device_get(state), meta, metric=result["cer"])

    # ---- the loop -------------------------------------------------------------------------
    writer = MetricWriter(workdir, resume_step=start_step)
    start = time.time()
    budget_s = 60 * config.train.max_minutes if config.train.max_minutes else float("inf")
    step, result, window, window_start = start_step, None, [], time.time()
    batches = training_batches(train_set, config, tokenizer.encode, buckets, start_step)
    with prefetch.Prefetcher(batches, buffer_size=3) as batch_stream:
        while step < num_steps:
            state, measurements = train_step(state, next(batch_stream))
            step += 1
            window.append(measurements)
            if step % config.train.log_every == 0 or step == num_steps:
                logged = jax.device_get(window)
                if not all(np.isfinite(m["loss"]) for m in logged):
                    raise FloatingPointError(f"non-finite training loss before step {step}; "
                                             "lower config.optimizer.learning_rate")
                mean = {k: float(np.mean([m[k] for m in logged])) for k in logged[0]}
                mean["loss_per_char"] = mean["nll_sum"] / max(mean["num_tokens"], 1.0)
                mean["steps_per_second"] = len(logged) / (time.time() - window_start)
                print(f"step {step:6d} | loss {mean['loss']:8.3f} | loss/char "
                      f"{mean['loss_per_char']:.3f} | grad {mean['grad_norm']:7.3f} | lr "
                      f"{mean['learning_rate']:.2e} | {mean['steps_per_second']:.2f} steps/s | "
                      f"{(time.time() - start) / 60:.1f} min", flush=True)
                writer.write(step, {"train": mean})
                window, window_start = [], time.time()
            out_of_time = time.time() - start > budget_s
            if step % config.eval.every == 0 or step == num_steps or out_of_time:
                result = evaluate(step)
                if step % config.checkpoint.every == 0 or step == num_steps or out_of_time:
                    save(step, result)
            if out_of_time:
                print(f"Stopping at step {step}: config.train.max_minutes="
                      f"{config.train.max_minutes} reached.", flush=True)
                break
    if result is None:  # nothing left to train: evaluate what was restored
        result = evaluate(step)
    checkpoints.close()
    writer.close()
    summary = {"step": step, "dev_wer": result["wer"], "dev_cer": result["cer"],
               "minutes": (time.time() - start) / 60}
    print(json.dumps(summary), flush=True)
    return summary


_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "work directory (checkpoints, metrics)")


def main(argv):
    del argv
    train(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
