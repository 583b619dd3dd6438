"""The trainers' command line: every mistake is one line naming the flag, field or file;
compiled programs are kept in a persistent cache."""

import os
import pathlib

import jax
import pytest
from absl import flags
from ml_collections import config_flags

from fl_dp_asr.train import cli

CONFIG = str(pathlib.Path(__file__).resolve().parents[2] / "experiments/configs/fl_dp.py")


def parse(*args: str) -> list[str]:
    """``cli.parse_flags`` on ``train_fl --config CONFIG --workdir w *args`` (own FlagValues)."""
    argv = ["train_fl", *args]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "config", flag_values=flag_values, sys_argv=argv
    )
    flags.DEFINE_string("workdir", None, "work dir", flag_values=flag_values)
    flags.DEFINE_bool("debug", False, "tracebacks", flag_values=flag_values)
    return cli.parse_flags(argv, "train_fl", flag_values)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--config", CONFIG, "--config.fl.cohort_sise=4"],
            f"--config.fl.cohort_sise=4: {CONFIG} has no field fl.cohort_sise. Did you mean "
            '"cohort_size" instead of "cohort_sise"?',
        ),
        (
            ["--config", CONFIG, "--config.fll.cohort_size=4"],
            f'--config.fll.cohort_size=4: {CONFIG} has no field fll. Did you mean "fl" instead of '
            '"fll"?',
        ),
        (
            ["--config=configs/missing.py", "--config.fl.cohort_size=4"],
            "--config configs/missing.py: no such file (experiment configs are Python files with "
            "get_config(), e.g. in experiments/configs/)",
        ),
        (
            ["--config", CONFIG, "--config.dp.sigma_dp=nan"],
            "config.dp.sigma_dp=nan is not a number: "
            "give it a finite value (--config.dp.sigma_dp=...)",
        ),
        (
            ["--config", CONFIG, "--config.fl.cohort_size=abc"],
            "flag --config.fl.cohort_size=abc: invalid literal for int() with base 10: 'abc'",
        ),
    ],
)
def test_mistakes_are_one_line_with_status_2(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        parse(*args, "--workdir", "w")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"train_fl: error: {message}\n"


def test_debug_shows_the_error_itself():
    with pytest.raises((AttributeError, KeyError), match="cohort_sise"):  # ml_collections
        parse("--config", CONFIG, "--workdir", "w", "--config.fl.cohort_sise=4", "--debug")


def test_good_flags_parse():
    assert parse("--config", CONFIG, "--workdir", "w", "--config.fl.cohort_size=4") == ["train_fl"]


def test_an_optional_field_can_be_set_to_none():
    flag_values = flags.FlagValues()
    argv = ["train_fl", "--config", CONFIG, "--workdir", "w", "--config.dp.target_cohort=None"]
    config_flags.DEFINE_config_file(
        "config", None, "config", flag_values=flag_values, sys_argv=argv
    )
    flags.DEFINE_string("workdir", None, "work dir", flag_values=flag_values)
    flags.DEFINE_bool("debug", False, "tracebacks", flag_values=flag_values)
    cli.parse_flags(argv, "train_fl", flag_values)
    assert flag_values["config"].value.dp.target_cohort is None


def test_none_for_a_missing_field_names_it(capsys):
    with pytest.raises(SystemExit):
        parse("--config", CONFIG, "--workdir", "w", "--config.dp.target_cohrt=None")
    assert "has no field dp.target_cohrt" in capsys.readouterr().err


def test_a_quoted_traceback_becomes_its_last_line():
    message = (
        "flag --config=c.py: Error whilst parsing config file:\n\n"
        'Traceback (most recent call last):\n  File "c.py", line 3\n'
        "ValueError: rounds must be positive\n"
    )
    assert cli.one_line(message) == (
        "flag --config=c.py: Error whilst parsing config file: ValueError: rounds must be positive"
    )


def test_library_field_names_become_config_paths():
    from experiments.configs import fl_dp

    config = fl_dp.get_config("demo")
    assert cli.config_path_message("dp.sigma_dp must be finite and >= 0, got -1.0", config) == (
        "config.dp.sigma_dp must be finite and >= 0, got -1.0"
    )
    assert cli.config_path_message("dp.clipping='x': choose one of ...", config).startswith(
        "config.dp.clipping='x'"
    )
    for untouched in ("rounds must be >= 1", "a.wav: no such file", "numpy.float is gone"):
        assert cli.config_path_message(untouched, config) == untouched


@pytest.fixture
def restore_jax_cache_settings():
    saved = cli.compilation_cache_settings()
    yield
    cli.set_compilation_cache(*saved)


def test_the_compilation_cache_goes_where_the_environment_says(
    monkeypatch, tmp_path, restore_jax_cache_settings
):
    monkeypatch.setenv(cli.CACHE_ENV, str(tmp_path / "xla"))
    assert cli.use_compilation_cache() == str(tmp_path / "xla")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 1.0


def test_the_compilation_cache_is_off_when_asked(monkeypatch, restore_jax_cache_settings):
    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv(cli.CACHE_ENV, "off")
    assert cli.use_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir == before


def test_a_cache_jax_already_has_is_kept_else_the_default(
    monkeypatch, tmp_path, restore_jax_cache_settings
):
    monkeypatch.delenv(cli.CACHE_ENV, raising=False)
    cli.set_compilation_cache(str(tmp_path / "jax_own"), 0.0)
    kept = cli.use_compilation_cache(default=str(tmp_path / "default"))
    assert kept == str(tmp_path / "jax_own")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0  # left as it is
    cli.set_compilation_cache(None)
    assert cli.use_compilation_cache(default="~/xla_here") == os.path.expanduser("~/xla_here")
    assert cli.DEFAULT_CACHE.startswith("~")
