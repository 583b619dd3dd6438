"""Runs the processes of a JAX multi-process job on localhost, for the tests."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
from typing import Any

REPO = pathlib.Path(__file__).resolve().parent.parent
# The tests' programs are compiled far more often than they run: without LLVM's
# optimizations XLA:CPU compiles them ~30 % faster (a test file of ASR round steps: 145 s →
# 100 s). Numbers compare only between runs under the same flags.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
COMPILATION_CACHE = pathlib.Path(tempfile.gettempdir()) / "fl_dp_asr_test_jax_cache"
CACHE_MIN_COMPILE_SECONDS = 0.0  # every program: most compile in under a second without LLVM


def python_env(devices: int = 1, xla_flags: str = TEST_XLA_FLAGS) -> dict[str, str]:
    """The environment of a test's Python subprocess: this repository importable,
    ``xla_flags`` (default: the test session's; "": XLA's defaults) with ``devices`` CPU
    devices, and the session's persistent compilation cache."""
    return dict(
        os.environ,
        PYTHONPATH=str(REPO),
        XLA_FLAGS=f"{xla_flags} --xla_force_host_platform_device_count={devices}",
        JAX_COMPILATION_CACHE_DIR=str(COMPILATION_CACHE),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=str(CACHE_MIN_COMPILE_SECONDS),
    )


def run_json(
    script: str, devices: int = 8, timeout: float = 300, xla_flags: str = TEST_XLA_FLAGS
) -> Any:
    """Runs ``python -c script`` in the repository with ``devices`` CPU devices and
    ``xla_flags`` (:func:`python_env`); returns the JSON its last stdout line prints.

    Fails with the exit code and stderr tail when the script fails, and with the stdout
    tail when its last line is not JSON.
    """
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=python_env(devices, xla_flags),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"the script (devices={devices}) exited {result.returncode}:\n{result.stderr[-3000:]}"
    )
    lines = result.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as error:
        raise AssertionError(
            f"the script's last stdout line is not JSON ({error}):\n"
            f"{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
        ) from error


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_python(
    argvs: list[list[str]],
    logs: pathlib.Path,
    devices_per_process: int,
    timeout: float = 300,
    exit_codes: list[int] | None = None,
) -> list[str]:
    """Runs ``python *argv`` for every argv at once; returns their stdouts.

    Each process sees ``devices_per_process`` CPU devices and shares the test session's
    persistent compilation cache. Fails with the stderr tail of any process that exits
    with another code than its ``exit_codes`` entry (default: 0 for all).
    """
    env = python_env(devices_per_process)
    procs = []
    for rank, argv in enumerate(argvs):
        # Files, not pipes: a process blocked on a full pipe would stall the others at the
        # distributed runtime's shutdown barrier.
        with open(logs / f"{rank}.out", "w") as out, open(logs / f"{rank}.err", "w") as err:
            procs.append(
                subprocess.Popen([sys.executable, *argv], env=env, cwd=REPO, stdout=out, stderr=err)
            )
    try:
        for proc in procs:
            proc.wait(timeout=timeout)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, code) in enumerate(zip(procs, exit_codes or [0] * len(procs))):
        assert proc.returncode == code, (
            f"process {rank} exited {proc.returncode}, not "
            f"{code}:\n"
            f"{(logs / f'{rank}.err').read_text()[-3000:]}"
        )
    return [(logs / f"{rank}.out").read_text() for rank in range(len(argvs))]
