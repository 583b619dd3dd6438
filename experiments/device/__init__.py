"""The device study (``python -m experiments.device_study``), one module per job:
:mod:`~experiments.device.preset` (what runs), :mod:`~experiments.device.workers` (the cells
and the processes that run them), :mod:`~experiments.device.report` (the report) and
:mod:`~experiments.device.carry` (what the device call carries)."""
