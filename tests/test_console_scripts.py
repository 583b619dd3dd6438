"""`pip install .` gives every tool as a console script: built as a wheel, installed, run."""

import configparser
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = {  # console script -> what its --help prints
    "fl-dp-asr-privacy": "usage: fl-dp-asr-privacy",
    "fl-dp-asr-stats": "--skip-bad-files",
    "fl-dp-asr-transcribe": "--beam-width",
    "fl-dp-asr-train-central": "--workdir",
    "fl-dp-asr-train-fl": "--workdir",
    "fl-dp-asr-replicate": "--seed-checkpoint",
    "fl-dp-asr-device-check": "--dry-run",
    "fl-dp-asr-plan": "--topology",
}
# The trainers parse flags with absl: its --help lists only the flags of the script's own
# module (none here: they live in the trainer module), --helpfull all of them; both exit with 1.
ABSL_HELP = ("--helpfull", 1)

# Runs an installed script as `python SCRIPT --help` would, but without the editable install's
# import hook (so a module missing from the wheel cannot come from the checkout), then says
# where the entry point's module was imported from.
DRIVER = """
import runpy, sys
script, module, help_flag = sys.argv[1:4]
sys.meta_path[:] = [f for f in sys.meta_path
                    if not getattr(f, "__module__", "").startswith("__editable__")]
sys.argv = [script, help_flag]
try:
    runpy.run_path(script, run_name="__main__")
    status = 0
except SystemExit as exit:
    status = exit.code
print(f"\\nMODULE_FILE {sys.modules[module].__file__}", flush=True)
sys.exit(status)
"""


def _copy_checkout(destination: pathlib.Path) -> None:
    """What a fresh clone holds for packaging: metadata files and the top-level packages."""
    destination.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, destination / name)
    for package in ROOT.iterdir():
        if (package / "__init__.py").is_file():
            shutil.copytree(
                package, destination / package.name, ignore=shutil.ignore_patterns("__pycache__")
            )


def _pip(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stderr[-3000:]}"


@pytest.mark.slow
def test_wheel_installs_every_console_script(tmp_path):
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    declared = dict(
        line.split(" = ")
        for line in config["options.entry_points"]["console_scripts"].strip().splitlines()
    )
    assert set(declared) == set(SCRIPTS)
    _copy_checkout(tmp_path / "src")
    _pip("wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(tmp_path / "src"))
    target = tmp_path / "installed"
    _pip(
        "install",
        "--no-deps",
        "--no-index",
        "-q",
        "--target",
        str(target),
        *map(str, (tmp_path / "dist").glob("*.whl")),
    )
    elsewhere = tmp_path / "elsewhere"  # not the checkout: nothing importable from the cwd
    elsewhere.mkdir()
    for script, expected in SCRIPTS.items():
        module = declared[script].split(":")[0]
        help_flag, status = (
            ABSL_HELP
            if script.startswith(("fl-dp-asr-train-", "fl-dp-asr-plan"))
            else ("--help", 0)
        )
        result = subprocess.run(
            [sys.executable, "-c", DRIVER, str(target / "bin" / script), module, help_flag],
            cwd=elsewhere,
            env={
                "PATH": "/usr/bin:/bin",
                "HOME": str(tmp_path),
                "PYTHONPATH": str(target),
                "JAX_PLATFORMS": "cpu",
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
        output = result.stdout + result.stderr
        assert expected in output, f"{script} {help_flag}:\n{output[-3000:]}"
        assert f"MODULE_FILE {target}/" in output, f"{script}: {output[-3000:]}"
        assert result.returncode == status, f"{script} {help_flag}:\n{output[-3000:]}"
