"""The replication study (``python -m experiments.replicate``), one module per job:
:mod:`~experiments.replication.design` (the grid, levels, seeds and cell ids),
:mod:`~experiments.replication.cell_run` (one cell's federated run),
:mod:`~experiments.replication.schedule` (cells run by worker processes),
:mod:`~experiments.replication.tables` and :mod:`~experiments.replication.report` (the
merged results as ``docs/replication.md``)."""
