"""Checkpoints for the central and federated trainers: a small wrapper on orbax.

A checkpoint is one step directory ``<directory>/<step>/`` holding a state pytree
(``state``, any pytree of arrays: params, optimizer state, round counter, PRNG key...)
and a JSON dict (``meta``: model config, data description, metrics...). Writes are
asynchronous (orbax writes to ``<step>.orbax-checkpoint-tmp-*`` then renames).

Only **complete** checkpoints are listed and restored: a step directory counts only if
it carries orbax's commit marker (``commit_success.txt``, written last). Incomplete step
directories and orbax temporary directories left by a crash are deleted, with a
warning, when a :class:`Checkpointer` opens the directory, so a resumed run can write
those steps again.

Retention: the ``max_to_keep`` most recent checkpoints plus, when ``best_metric`` is
set, the best one by that metric (``best_mode`` ``"min"`` or ``"max"``).

Conventions shared by the trainers and ``python -m fl_dp_asr.cli.transcribe``: the state
is a dict with the model parameters under ``"params"``, and ``meta["model_config"]`` is
``ModelConfig.to_dict()``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from fl_dp_asr.models.config import ModelConfig
from fl_dp_asr.models.encoder import unstack_blocks

PyTree = Any
COMMIT_MARKER = "commit_success.txt"
#: The trainers keep their checkpoints in ``<workdir>/checkpoints``.
CHECKPOINTS_SUBDIR = "checkpoints"
_TMP_SUFFIX = ".orbax-checkpoint-tmp"

logger = logging.getLogger(__name__)


class CheckpointSaveError(OSError):
    """A checkpoint could not be written (disk full, read-only or vanished directory); the
    message names the directory, the step and the last complete checkpoint."""


class Checkpointer:
    """Saves and restores ``(step, state pytree, meta dict)``; keeps last K plus the best.

    Args:
        directory: work directory (made absolute; created if missing).
        max_to_keep: most recent checkpoints kept (>= 1).
        best_metric: name of the metric passed to :meth:`save` that ranks checkpoints;
            the best one is kept in addition to the last ``max_to_keep``. None: recency only.
        best_mode: ``"min"`` (e.g. WER) or ``"max"``.
        async_save: write in a background thread (call :meth:`wait` before reading).
        read_only: open an existing directory for restoring only (touches nothing on disk;
            for readers such as the transcription CLI while a trainer may be writing).

    Example::

        ckpt = Checkpointer("/abs/work_dir", max_to_keep=3, best_metric="dev_wer")
        restored = ckpt.restore_latest(abstract_state)   # None on a fresh directory
        ckpt.save(step, {"params": params, "opt_state": opt_state}, {"model_config": ...},
                  metric=dev_wer)
        ckpt.close()
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        max_to_keep: int = 3,
        best_metric: str | None = None,
        best_mode: str = "min",
        async_save: bool = True,
        read_only: bool = False,
    ):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        if best_mode not in ("min", "max"):
            raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
        self.directory = os.path.abspath(os.fspath(directory))
        self.best_metric = best_metric
        self.read_only = read_only
        if read_only:
            if not os.path.isdir(self.directory):
                raise FileNotFoundError(f"checkpoint directory {self.directory} does not exist")
        else:
            os.makedirs(self.directory, exist_ok=True)
            if jax.process_index() == 0:  # the others wait in orbax's barrier below
                self._remove_incomplete()
        policies = [checkpoint_managers.LatestN(n=max_to_keep)]
        best_fn = None
        if best_metric is not None:
            # A checkpoint saved without the metric carries {} (orbax warns at every save
            # given none) and ranks last: kept only while among the most recent.
            worst = math.inf if best_mode == "min" else -math.inf
            best_fn = lambda metrics: metrics.get(best_metric, worst)  # noqa: E731
            policies.append(
                checkpoint_managers.BestN(
                    get_metric_fn=best_fn,
                    reverse=best_mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        # read_only is ours (save refuses; nothing is created, cleaned or deleted): orbax's
        # own flag only logs notices a user cannot act on when a seed model is loaded.
        options = ocp.CheckpointManagerOptions(
            create=not read_only,
            best_fn=best_fn,
            best_mode=best_mode,
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._saving: int | None = None  # the step of the last save started
        self._failed = False  # a failed save was reported

    def _remove_incomplete(self) -> None:
        for name in incomplete_checkpoints(self.directory):
            path = os.path.join(self.directory, name)
            logger.warning(
                "removing incomplete checkpoint %s (an unfinished save, "
                "e.g. interrupted by a crash)",
                path,
            )
            shutil.rmtree(path)

    def save(
        self, step: int, state: PyTree, meta: dict[str, Any], metric: float | None = None
    ) -> None:
        """Starts saving ``state`` and the JSON-serializable ``meta`` as ``step``.

        ``metric`` is required to rank the checkpoint when ``best_metric`` is set (it is
        also stored in the checkpoint); a checkpoint saved without it is kept only while
        among the most recent. Raises ValueError if ``step`` is saved or being saved
        (check with :meth:`has_step`).
        """
        if self.read_only:
            raise ValueError(f"Checkpointer({self.directory}) was opened read_only")
        if metric is not None and self.best_metric is None:
            raise ValueError("a metric was given but this Checkpointer has no best_metric")
        if self.has_step(step):
            raise ValueError(f"checkpoint step {step} already exists in {self.directory}")
        metrics = None
        if self.best_metric is not None:
            metrics = {} if metric is None else {self.best_metric: float(metric)}
        self._wait_for_saves()  # raises the failure of the save in flight, if any
        self._saving = int(step)
        with self._failing():
            # A directory the step cannot be made in (read-only, full, gone) fails here, at
            # once: in orbax's background threads its waiters hang for minutes at exit.
            check_writable(self.directory)
            self._manager.save(
                int(step),
                metrics=metrics,
                force=True,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))
                ),
            )

    @contextlib.contextmanager
    def _failing(self):
        """Raises what fails in a save as :class:`CheckpointSaveError`."""
        try:
            yield
        except Exception as error:
            self._failed = True
            raise CheckpointSaveError(
                f"saving checkpoint {self._saving} to {self.directory} failed "
                f"({type(error).__name__}: {error}). The last complete checkpoint there "
                f"({self.latest_step()}) stays loadable: free space or make the directory "
                "writable, then run the same command to resume from it."
            ) from error

    def restore(self, step: int, abstract_state: PyTree | None = None) -> tuple[PyTree, dict]:
        """``(state, meta)`` of ``step``.

        ``abstract_state``: a pytree of arrays or ``jax.ShapeDtypeStruct`` (with shardings)
        giving the structure, dtypes and placement; None restores the saved tree as is.
        """
        if step not in self.all_steps():
            raise FileNotFoundError(
                f"no complete checkpoint for step {step} in "
                f"{self.directory}; complete steps: {self.all_steps()}"
            )
        state_args = (
            ocp.args.StandardRestore()
            if abstract_state is None
            else ocp.args.StandardRestore(abstract_state)
        )
        restored = self._manager.restore(
            int(step), args=ocp.args.Composite(state=state_args, meta=ocp.args.JsonRestore())
        )
        return restored["state"], dict(restored["meta"])

    def restore_latest(
        self, abstract_state: PyTree | None = None
    ) -> tuple[int, PyTree, dict] | None:
        """``(step, state, meta)`` of the latest complete checkpoint, or None if there is none."""
        step = self.latest_step()
        if step is None:
            return None
        state, meta = self.restore(step, abstract_state)
        return step, state, meta

    def has_step(self, step: int) -> bool:
        """Whether ``step`` is saved or being saved: an asynchronous save still in flight
        counts (it is not in :meth:`all_steps` until committed, but cannot be started again).
        """
        return step in self._manager.all_steps()

    def all_steps(self) -> list[int]:
        """Complete checkpoint steps, ascending (waits for nothing)."""
        return sorted(
            s
            for s in self._manager.all_steps()
            if os.path.exists(os.path.join(self.directory, str(s), COMMIT_MARKER))
        )

    def latest_step(self) -> int | None:
        """The latest complete step, or None."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The step with the best metric (the latest one if ``best_metric`` is None)."""
        return self._manager.best_step()

    def wait(self) -> None:
        """Blocks until pending saves are written; raises :class:`CheckpointSaveError` if
        one failed."""
        self._wait_for_saves()

    def _wait_for_saves(self) -> None:
        with self._failing():
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager (raises like :meth:`wait`, unless
        the failure was raised already)."""
        reported = self._failed
        try:
            with self._failing():
                self._manager.close()
        except CheckpointSaveError:
            self._manager.close()  # the first call raised the failed save before releasing
            if not reported:
                raise

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def incomplete_checkpoints(directory: str) -> list[str]:
    """Names of the step directories without orbax's commit marker and of orbax's temporary
    directories in ``directory``: saves that never finished."""
    names = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        unfinished = name.isdigit() and not os.path.exists(os.path.join(path, COMMIT_MARKER))
        if os.path.isdir(path) and (unfinished or _TMP_SUFFIX in name):
            names.append(name)
    return names


def check_writable(directory: str) -> None:
    """Raises OSError unless a directory can be made (and removed) in ``directory``."""
    os.rmdir(tempfile.mkdtemp(prefix=".write-probe-", dir=directory))


def checkpoint_directory(directory: str | os.PathLike) -> str:
    """``directory/checkpoints`` when ``directory`` is a trainer's work directory that holds
    one, else ``directory`` itself."""
    nested = os.path.join(os.fspath(directory), CHECKPOINTS_SUBDIR)
    return nested if os.path.isdir(nested) else os.fspath(directory)


def load_model_checkpoint(
    directory: str | os.PathLike, step: int | None = None
) -> tuple[ModelConfig, PyTree, int]:
    """``(model_config, params, step)`` from a trainer checkpoint, opened read-only.

    ``directory`` is a trainer's work directory or its ``checkpoints/`` directory.
    Follows the conventions above: parameters under ``state["params"]`` and
    ``meta["model_config"]``. ``step=None`` takes the latest complete checkpoint. The
    parameters come in the model's own layout (``block_NN``), also from the federated
    trainer, which saves them stacked (``asr.PARAM_LAYOUT``).
    Used by the transcription CLI and to start federated training from a seed model.

    Raises:
        FileNotFoundError: no such directory, no complete checkpoint (the message lists the
            unfinished saves found), or no complete checkpoint ``step`` (it lists the steps).
    """
    checkpointer = Checkpointer(checkpoint_directory(directory), read_only=True)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            unfinished = incomplete_checkpoints(checkpointer.directory)
            found = (
                f"only unfinished saves: {', '.join(unfinished)}"
                if unfinished
                else "no step directory"
            )
            raise FileNotFoundError(
                f"no complete checkpoint in {checkpointer.directory} ({found}); give a "
                f"trainer's work directory or its {CHECKPOINTS_SUBDIR}/ directory"
            )
        state, meta = checkpointer.restore(step)
    finally:
        checkpointer.close()
    if "model_config" not in meta or "params" not in state:
        raise ValueError(
            f"checkpoint {checkpointer.directory}/{step} lacks meta['model_config'] "
            "or state['params']; was it written by a fl_dp_asr trainer?"
        )
    # The federated trainer saves the blocks stacked (its round layout): the model's own.
    return ModelConfig.from_dict(meta["model_config"]), unstack_blocks(state["params"]), step
