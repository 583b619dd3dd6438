r"""Central (non-federated) training of the CTC seed model.

    python -m experiments.train_central --config experiments/configs/central.py:demo \
        --workdir runs/demo/central [--config.train.num_steps=2000 ...]

Loads the training and evaluation splits with :mod:`fl_dp_asr.data` (TFDS builders over a
local corpus; the synthetic espeak-ng corpus is generated first when ``config.data.manual_dir``
is ``config.data.synthetic_dir`` and the corpus is missing), trains with SpecAugment
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
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import flags
from ml_collections import config_flags

from experiments import canary_utterances
from fl_dp_asr.data import federated, prefetch
from fl_dp_asr.models import asr
from fl_dp_asr.models.config import ModelConfig
from fl_dp_asr.text.tokenizer import CharTokenizer
from fl_dp_asr.train import cli, utils
from fl_dp_asr.train.checkpoint import Checkpointer
from fl_dp_asr.train.metrics import MetricWriter

PyTree = Any


def training_batches(
    dataset: federated.FederatedDataset,
    config: ml_collections.ConfigDict,
    tokenize: federated.Tokenize,
    buckets: federated.LengthBuckets,
    start_step: int,
) -> Iterator[dict[str, np.ndarray]]:
    """The batch of every step from ``start_step`` on (epochs repeat forever)."""
    batch_size = config.train.batch_size
    steps_per_epoch = -(-len(dataset) // batch_size)
    epoch, index = divmod(start_step, steps_per_epoch)
    while True:
        batches = federated.epoch_batches(
            dataset.num_samples, batch_size, config.seed, epoch, config.train.sort_window
        )
        for rows in batches[index:]:
            yield federated.make_batch(
                dataset, rows.tolist(), tokenize=tokenize, buckets=buckets, batch_size=batch_size
            )
        epoch, index = epoch + 1, 0


def make_train_step(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    rng: jax.Array,
) -> Callable:
    """The jitted step ``(state, batch) -> (state, measurements)``; the state is donated and
    the PRNG key of step s is ``fold_in(rng, s)``."""

    @functools.partial(jax.jit, donate_argnums=0)
    def train_step(state, batch):
        key = jax.random.fold_in(rng, state["step"])
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch, key)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        measurements = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "update_norm": optax.tree.norm(updates),
            "param_norm": optax.tree.norm(params),
            "learning_rate": schedule(state["step"]),
            **aux,
        }
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, measurements

    return train_step


def mean_measurements(window: list[dict[str, Any]], step: int, seconds: float) -> dict[str, float]:
    """Means over the steps since the last log; stops on a non-finite loss."""
    logged = jax.device_get(window)
    if not all(np.isfinite(m["loss"]) for m in logged):
        raise FloatingPointError(
            f"non-finite training loss before step {step}; lower config.optimizer.learning_rate"
        )
    mean = {k: float(np.mean([m[k] for m in logged])) for k in logged[0]}
    mean["loss_per_char"] = mean["nll_sum"] / max(mean["num_tokens"], 1.0)
    mean["steps_per_second"] = len(logged) / seconds
    return mean


def evaluate(
    params: PyTree, model_config: ModelConfig, eval_batches: list[dict[str, Any]], step: int
) -> dict[str, Any]:
    """Greedy WER/CER on the held-out speakers, printed with three examples."""
    result = asr.evaluate(params, model_config, eval_batches, max_examples=3)
    for reference, hypothesis in result.pop("examples"):
        print(f"    ref: {reference}\n    hyp: {hypothesis}")
    print(
        f"step {step:6d} | dev WER {100 * result['wer']:.1f} % CER "
        f"{100 * result['cer']:.1f} % loss/char {result['loss_per_token']:.3f}",
        flush=True,
    )
    return result


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) the central model.

    Returns:
        ``{"step", "dev_wer", "dev_cer", "minutes"}`` of the last evaluation.
    """
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    tokenizer = CharTokenizer(config.data.language)
    num_steps = config.train.num_steps

    # ---- 1. data --------------------------------------------------------------------------
    data = utils.load_data(config.data, tokenizer, config.eval.batch_size)
    data, utterance_audit = canary_utterances.insert(config, data, tokenizer, workdir)
    print(
        f"train: {len(data.train)} utterances, {data.train.num_users} speakers, "
        f"{data.train.hours:.2f} h; eval: {len(data.eval)} utterances, {data.eval.num_users} "
        f"unseen speakers; buckets {data.buckets}",
        flush=True,
    )

    # ---- 2. model, optimizer, state: resume → init checkpoint → scratch -------------------
    init_key, rng = jax.random.split(jax.random.key(config.seed))
    model_config, params, source = utils.load_seed_model(
        config.init_checkpoint, config.model, init_key
    )
    optimizer = utils.optimizer_from_config(config.optimizer, num_steps)
    state = {"params": params, "opt_state": optimizer.init(params), "step": jnp.int32(0)}
    checkpoints = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=config.checkpoint.keep,
        best_metric="dev_cer",
    )
    restored = checkpoints.restore_latest(jax.tree.map(jnp.asarray, state))
    if restored is not None:
        _, state, _ = restored
        source = f"{checkpoints.directory} step {int(state['step'])}"
    step = int(state["step"])
    canary_utterances.check_model(utterance_audit, model_config)
    print(
        f"model: {asr.count_params(state['params']) / 1e6:.2f} M parameters, from {source}",
        flush=True,
    )
    train_step = make_train_step(
        asr.make_loss_fn(model_config, train=True),
        optimizer,
        utils.learning_rate_schedule(config.optimizer, num_steps),
        rng,
    )

    # ---- 3. the loop ----------------------------------------------------------------------
    writer = MetricWriter(workdir, resume_step=step)
    start = window_start = time.time()
    budget_s = 60 * config.train.max_minutes if config.train.max_minutes else float("inf")
    result, window, memorized = None, [], {}

    def memorization() -> dict[str, float]:
        """The canary utterances measured on the current model ({}: no audit)."""
        if utterance_audit is None:
            return {}
        return canary_utterances.record(
            utterance_audit, state["params"], model_config, workdir, step, writer
        )

    batches = training_batches(data.train, config, tokenizer.encode, data.buckets, step)
    with prefetch.Prefetcher(batches, buffer_size=3) as batch_stream:
        while step < num_steps:
            state, measurements = train_step(state, next(batch_stream))
            step += 1
            window.append(measurements)
            if utils.itstime(step, config.train.log_every, num_steps):
                mean = mean_measurements(window, step, time.time() - window_start)
                print(
                    f"step {step:6d} | loss {mean['loss']:8.3f} | loss/char "
                    f"{mean['loss_per_char']:.3f} | grad {mean['grad_norm']:7.3f} | lr "
                    f"{mean['learning_rate']:.2e} | {mean['steps_per_second']:.2f} steps/s | "
                    f"{(time.time() - start) / 60:.1f} min",
                    flush=True,
                )
                writer.write(step, {"train": mean})
                window, window_start = [], time.time()
            out_of_time = time.time() - start > budget_s
            if utils.itstime(step, config.eval.every, num_steps) or out_of_time:
                result = evaluate(state["params"], model_config, data.eval_batches, step)
                writer.write(step, {"eval": result, "elapsed_minutes": (time.time() - start) / 60})
                memorized = memorization()
                if utils.itstime(step, config.checkpoint.every, num_steps) or out_of_time:
                    save(checkpoints, step, state, model_config, config, result)
            if out_of_time:
                print(
                    f"Stopping at step {step}: config.train.max_minutes="
                    f"{config.train.max_minutes} reached.",
                    flush=True,
                )
                break
    if result is None:  # nothing left to train: evaluate what was restored
        result = evaluate(state["params"], model_config, data.eval_batches, step)
        writer.write(step, {"eval": result, "elapsed_minutes": (time.time() - start) / 60})
        memorized = memorization()
    checkpoints.close()
    writer.close()
    summary = {
        "step": step,
        "dev_wer": result["wer"],
        "dev_cer": result["cer"],
        "minutes": (time.time() - start) / 60,
    } | canary_utterances.summary_fields(memorized)
    print(json.dumps(summary), flush=True)
    return summary


def save(
    checkpoints: Checkpointer,
    step: int,
    state: PyTree,
    model_config: ModelConfig,
    config: ml_collections.ConfigDict,
    result: dict[str, Any],
) -> None:
    """Checkpoints ``state`` at ``step`` (once), ranked by dev CER."""
    if step in checkpoints.all_steps():
        return
    meta = {
        "step": step,
        "model_config": model_config.to_dict(),
        "config": json.loads(config.to_json()),
        "dev": {k: result[k] for k in ("wer", "cer", "loss", "num_utterances")},
    }
    checkpoints.save(step, jax.device_get(state), meta, metric=result["cer"])


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "work directory (checkpoints, metrics)")


def main(argv):
    del argv
    train(_CONFIG.value, _WORKDIR.value)


def console_main() -> None:
    """The console script ``fl-dp-asr-train-central``: ``python -m experiments.train_central``."""
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run_main(main, "train_central")


if __name__ == "__main__":
    console_main()
