"""Console-script functions for programs whose ``main`` is not one by itself.

A console script runs ``sys.exit(function())``, so its function must return an exit status or
None; ``benchmarks.device_check.main`` returns its report (which ``sys.exit`` would print as an
error with status 1).
"""


def device_check() -> None:
    """The console script ``fl-dp-asr-device-check``: ``python -m benchmarks.device_check``."""
    from benchmarks import device_check as check  # pylint: disable=import-outside-toplevel

    check.main()
