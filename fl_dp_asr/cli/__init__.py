"""The library's command-line tools (each also a console script of ``pip install .``):

``python -m fl_dp_asr.cli.privacy`` (``fl-dp-asr-privacy``)
    The privacy calculator: ε of a run, the noise for a target ε, and the paper's population
    extrapolation, for the Gaussian mechanism with sampling or correlated noise (DP-FTRL).
    Accounting only: it starts without JAX.
``python -m fl_dp_asr.cli.transcribe`` (``fl-dp-asr-transcribe``)
    Transcribes audio files with a trainer's checkpoint.

The trainers, the studies and the device check are command lines of ``experiments/``
(``fl-dp-asr-train-central``, ``fl-dp-asr-train-fl``, ``fl-dp-asr-replicate``,
``fl-dp-asr-device-check``); ``fl-dp-asr-stats`` is :mod:`fl_dp_asr.data.stats`.
"""
