"""Command line of the trainers: mistakes are one line on stderr, not a traceback.

``run_main(main, prog)`` replaces ``absl.app.run(main)`` in a program that defines the
flags ``--config`` (an ``ml_collections`` config file) and ``--workdir``:

* a bad flag, a missing config file, an override of a field the config lacks, a NaN config
  value, or an error of the run's inputs (``ValueError``, ``OSError``, ``DataError``: a
  config value out of range, a missing checkpoint, a corrupt corpus) prints
  ``<prog>: error: <what, naming the flag, config field or file>`` and exits with status 2;
* the run's own failures (``FloatingPointError``: the loss or the parameters became NaN)
  print the same line and exit with status 1;
* Ctrl-C outside the trainer's own signal handling prints ``<prog>: interrupted`` and exits
  with status 130;
* ``--debug`` shows the traceback instead;
* a work directory that the run created and left without a file is removed again, so a
  run that never started leaves nothing behind.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn, cast

from absl import app, flags
from ml_collections import config_dict

from fl_dp_asr.data.errors import DataError

#: Errors of the run's inputs (config values, files, corpus): exit status 2.
INPUT_ERRORS = (DataError, ValueError, OSError)
#: Failures of the run itself (divergence): exit status 1.
RUN_ERRORS = (FloatingPointError,)
_TRACEBACK = "Traceback (most recent call last):"


def one_line(message: str) -> str:
    """``message`` on one line; of a quoted traceback only its last line (the error) is kept."""
    before, traceback_header, traceback_text = message.partition(_TRACEBACK)
    if traceback_header:
        message = before + traceback_text.strip().splitlines()[-1]
    return " ".join(message.split())


def fail(prog: str, message: str, status: int = 2) -> NoReturn:
    """Prints ``<prog>: error: <message>`` on one line of stderr and exits with ``status``."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(status)


def debug_requested(argv: Sequence[str]) -> bool:
    """Whether ``--debug`` is on the command line (also before the flags are parsed)."""
    return any(arg in ("--debug", "--debug=true", "--debug=True", "--debug=1") for arg in argv)


def config_file(argv: Sequence[str]) -> str | None:
    """The file named by ``--config FILE[:ARG]`` / ``--config=FILE[:ARG]``, or None."""
    for arg, following in zip(argv, [*argv[1:], None]):
        name, has_value, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name == "config":
            return (value if has_value else following or "").split(":", 1)[0]
    return None


def nan_fields(config: config_dict.ConfigDict, prefix: str = "config") -> Iterator[str]:
    """Dotted paths (``config.dp.sigma_dp``) of the config's NaN values."""
    for key, value in config.items():
        path = f"{prefix}.{key}"
        if isinstance(value, config_dict.ConfigDict):
            yield from nan_fields(value, path)
        elif isinstance(value, float) and math.isnan(value):
            yield path


def _lookup_message(error: BaseException) -> str:
    """The text of ml_collections' unknown-field error (a KeyError, maybe in an AttributeError)."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    return str(error.args[0]) if error.args else type(error).__name__


def unknown_field_message(argv: Sequence[str], error: LookupError | AttributeError) -> str:
    """``--config.fl.cohort_sise=4: <file> has no field fl.cohort_sise. Did you mean ...``."""
    field, _, suggestion = _lookup_message(error).partition("\n")
    field = field.strip("'\"")
    for arg in argv:
        path = arg.lstrip("-").partition("=")[0]
        parts = path.split(".")
        if arg.startswith("-") and parts[0] == "config" and field in parts[1:]:
            known = ".".join(parts[1 : parts.index(field, 1) + 1])
            return f"{arg}: {config_file(argv)} has no field {known}. {suggestion}"
    return f"the config has no field {field!r}. {suggestion}"


def without_none_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``argv`` without its ``--config.<field>=None`` flags, and those fields.

    ml_collections parses an override with the field's type (``int("None")`` fails for an
    optional int such as ``dp.target_cohort``), so "off" could not be said on the command
    line; :func:`parse_flags` sets these fields to None after the rest is parsed."""
    kept, fields = [], []
    for arg in argv:
        name, equals, value = arg.partition("=")
        if name.startswith("--config.") and equals and value == "None":
            fields.append(name.removeprefix("--config."))
        else:
            kept.append(arg)
    return kept, fields


def set_none(config: config_dict.ConfigDict, field: str) -> None:
    """Sets the dotted ``field`` of ``config`` to None (KeyError: no such field)."""
    *sections, name = field.split(".")
    for section in sections:
        config = config[section]
    if name not in config:
        raise KeyError(name)
    config[name] = None


def parse_flags(
    argv: Sequence[str], prog: str, flag_values: flags.FlagValues = flags.FLAGS
) -> list[str]:
    """Parses ``argv`` into ``flag_values`` (``absl.app.run``'s ``flags_parser``); exits with
    status 2 and one line on a mistake (see the module docstring)."""
    try:
        path = config_file(argv)
        if path and not os.path.isfile(path):
            raise ValueError(
                f"--config {path}: no such file (experiment configs are Python "
                "files with get_config(), e.g. in experiments/configs/)"
            )
        parsed, to_none = without_none_overrides(argv)
        remaining = flag_values(parsed)
        for field in to_none:
            set_none(flag_values["config"].value, field)
        nan = next(nan_fields(flag_values["config"].value), None)
        if nan:
            raise ValueError(f"{nan}=nan is not a number: give it a finite value (--{nan}=...)")
        return remaining
    except (KeyError, AttributeError) as error:  # ml_collections: override of a missing field
        if debug_requested(argv):
            raise
        fail(prog, unknown_field_message(argv, error))
    except (flags.Error, ValueError, OSError) as error:
        if debug_requested(argv):
            raise
        fail(prog, str(error))


def config_path_message(message: str, config: Any) -> str:
    """Prefixes ``config.`` when ``message`` starts with a field of ``config`` written as the
    library writes it (``dp.sigma_dp must be >= 0`` → ``config.dp.sigma_dp must be >= 0``),
    so every config error names the field as it is set on the command line."""
    field = message.split(" ", 1)[0].split("=", 1)[0]
    section = field.split(".", 1)[0]
    if "." in field and config is not None and section in config:
        return "config." + message
    return message


def remove_if_empty(directory: str) -> None:
    """Removes ``directory`` if it holds no file (only, maybe, empty subdirectories)."""
    if os.path.isdir(directory) and not any(files for _, _, files in os.walk(directory)):
        shutil.rmtree(directory)


def _run(main: Callable[[list[str]], Any], prog: str, argv: list[str]) -> Any:
    workdir = cast(str, flags.FLAGS["workdir"].value)  # a required flag
    created = not os.path.exists(workdir)
    try:
        return main(argv)
    except (*INPUT_ERRORS, *RUN_ERRORS, KeyboardInterrupt) as error:
        if created:
            remove_if_empty(workdir)
        if flags.FLAGS.debug:
            raise
        if isinstance(error, KeyboardInterrupt):
            print(f"{prog}: interrupted", file=sys.stderr, flush=True)
            sys.exit(130)
        config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
        fail(
            prog,
            config_path_message(str(error) or type(error).__name__, config),
            status=1 if isinstance(error, RUN_ERRORS) else 2,
        )


CACHE_ENV = "FL_DP_ASR_XLA_CACHE"
DEFAULT_CACHE = os.path.join("~", ".cache", "fl_dp_asr", "xla")
# JAX's options of its persistent compilation cache: the directory, and the shortest compile
# (seconds) whose program is stored.
CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")


def compilation_cache_settings() -> tuple[str | None, float]:
    """This process's ``(cache directory, min compile seconds)`` (:data:`CACHE_OPTIONS`)."""
    import jax  # pylint: disable=import-outside-toplevel

    return tuple(getattr(jax.config, name) for name in CACHE_OPTIONS)


def set_compilation_cache(directory: str | None, min_compile_seconds: float = 1.0) -> None:
    """Points JAX's persistent compilation cache at ``directory`` (None: no cache) from the
    next compilation on: JAX reads the directory once, so its cache is reset too."""
    import jax  # pylint: disable=import-outside-toplevel
    from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=import-outside-toplevel

    for name, value in zip(CACHE_OPTIONS, (directory, min_compile_seconds)):
        jax.config.update(name, value)
    compilation_cache.reset_cache()


def use_compilation_cache(env: str = CACHE_ENV, default: str = DEFAULT_CACHE) -> str | None:
    """Turns on JAX's persistent compilation cache for this process, so that a resumed or
    repeated run reads its compiled programs back instead of compiling them again (the
    trainers' round step: 40–90 s on 2 CPU cores). Same program, same numbers: the cache
    only skips XLA's compilation.

    Where: the directory in ``$<env>`` (``off``: no cache); else a cache JAX is already
    configured with (e.g. ``JAX_COMPILATION_CACHE_DIR``), left as it is; else ``default``
    (``~/.cache/fl_dp_asr/xla``). Programs that compile in under a second are not stored.
    Call it before the first compilation (JAX reads the setting once). Returns the
    directory, or None when off.
    """
    chosen = os.environ.get(env)
    if chosen == "off":
        return None
    configured = compilation_cache_settings()[0]
    if not chosen and configured:
        return configured
    where = os.path.expanduser(chosen or default)
    set_compilation_cache(where)
    return where


def run_main(main: Callable[[list[str]], Any], prog: str) -> None:
    """``absl.app.run(main)`` with the error handling of the module docstring, and the
    persistent compilation cache on (:func:`use_compilation_cache`).

    Args:
        main: the program's ``main(argv)``; the flags ``--config`` (config file) and
            ``--workdir`` must be defined.
        prog: the program's name in error messages (``train_fl``).
    """
    use_compilation_cache()
    flags.DEFINE_bool("debug", False, "show the traceback of an error instead of one line")
    app.run(
        functools.partial(_run, main, prog), flags_parser=functools.partial(parse_flags, prog=prog)
    )
