"""What the device call carries (the machine has no espeak-ng and no network): the
synthetic corpus, generated here, and the wheels its image lacks, within the call's
64 MiB; and the device call's command."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import markdown_table
from experiments.device.preset import DEVICE_CORPUS, Preset
from fl_dp_asr.data import synthetic
from fl_dp_asr.data.errors import DataError

CORPUS_DIR = "data/device_corpus"  # git-ignored (/data/), carried to the device
WHEEL_DIR = ".whl"  # git-ignored, carried to the device
CARRY_LIMIT_MIB = 64.0
# What the device image lacks (docs/performance.md, "Running the device check"), pinned as
# tested here; promise has no wheel on PyPI (built with ``pip wheel``).
WHEELS = (
    "dp-accounting==0.6.0",
    "jax-privacy==2.0.0",
    "jiwer==4.0.0",
    "rapidfuzz==3.14.6",
    "soundfile==0.14.0",
    "cffi==2.1.1",
    "pycparser==3.12",
    "tensorflow-datasets==4.9.10",
    "tensorflow-metadata==1.21.0",
    "toml==0.10.2",
    "immutabledict==4.3.1",
    "termcolor==3.3.0",
    "simple-parsing==0.1.9",
    "docstring-parser==0.18.0",
    "googleapis-common-protos==1.76.0",
    "array-record==0.8.6",
    "ml-collections==1.1.0",
)
SOURCE_WHEELS = ("promise==2.3",)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
DEVICE_TIMEOUT_S = 480


def corpus_manifest(preset: Preset, corpus: str) -> dict[str, Any]:
    """The corpus's manifest; generated here if missing (needs espeak-ng)."""
    try:
        return synthetic.generate_corpus(corpus, preset.corpus, progress=False)
    except DataError as error:
        raise FileNotFoundError(
            f"{corpus} holds no corpus with the preset's settings and it cannot be generated "
            f"here ({error}). Run `python -m experiments.device_study --prepare` where "
            f"espeak-ng is installed and carry {corpus}."
        ) from error


def utterances(manifest: dict[str, Any]) -> int:
    return sum(split["utterances"] for split in manifest["splits"].values())


def size_mib(path: str) -> float:
    return sum(f.stat().st_size for f in pathlib.Path(path).rglob("*") if f.is_file()) / 2**20


def device_command() -> str:
    """The device call's command (run from the repository root; carry :func:`carry`)."""
    return (
        "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "
        f"--upgrade --target /tmp/site {WHEEL_DIR}/*.whl && export PYTHONPATH=/tmp/site:$PWD "
        "PYTHONUNBUFFERED=1 || exit; set -o pipefail; python3 -m experiments.device_study "
        "--out $OUT --workdir /tmp/device_study 2>&1 | tee "
        "$OUT/device_study.log"
    )


def carry() -> list[str]:
    return [WHEEL_DIR, CORPUS_DIR]


def download_wheels(wheel_dir: str) -> None:
    """The wheels the device image lacks, for its Python 3.12 on x86-64 (needs the network).

    Raises:
        subprocess.CalledProcessError: pip could not download or build one.
    """
    pip = [sys.executable, "-m", "pip"]
    platforms = [flag for name in PLATFORMS for flag in ("--platform", name)]
    subprocess.run(
        [
            *pip,
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            *platforms,
            "-d",
            wheel_dir,
            *WHEELS,
        ],
        check=True,
    )
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", wheel_dir, *SOURCE_WHEELS], check=True)


def tree_mib() -> float:
    """What the device call sends besides the carried paths: the files git tracks or would
    track (untracked, not ignored), MiB."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout
    paths = [pathlib.Path(p) for p in listed.decode().split("\0") if p]
    return sum(p.stat().st_size for p in paths if p.is_file()) / 2**20


def prepare(corpus: str = CORPUS_DIR, wheel_dir: str = WHEEL_DIR) -> str:
    """Generates the corpus and downloads the wheels here; returns the sizes and the
    device call (markdown).

    Raises:
        ValueError: the carry and the tree exceed the device call's 64 MiB.
    """
    started = time.time()
    manifest = synthetic.generate_corpus(corpus, DEVICE_CORPUS)
    generated = time.time() - started
    download_wheels(wheel_dir)
    sizes = {"corpus": size_mib(corpus), "wheels": size_mib(wheel_dir), "tree": tree_mib()}
    total = sum(sizes.values())
    text = "\n".join(
        [
            markdown_table(
                ["what travels", "MiB"],
                [[k, f"{v:.1f}"] for k, v in sizes.items()]
                + [["total (limit 64)", f"{total:.1f}"]],
            ),
            "",
            f"Corpus: {utterances(manifest)} utterances ({manifest['generation_seconds']} s to "
            f"generate, {generated:.0f} s this call). Device call: `carry` {json.dumps(carry())}, "
            f"`timeout_s` {DEVICE_TIMEOUT_S}, command:",
            "",
            "```bash",
            device_command(),
            "```",
        ]
    )
    if total > CARRY_LIMIT_MIB:
        raise ValueError(
            f"the device call would send {total:.1f} MiB (> {CARRY_LIMIT_MIB:g}):"
            f" {sizes}; shrink DEVICE_CORPUS."
        )
    return text
