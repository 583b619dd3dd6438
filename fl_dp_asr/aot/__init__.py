"""Ahead-of-time compilation for accelerators that are not attached.

JAX compiles for TPU slices and GPU boxes from their descriptions alone (libtpu's and the
CUDA plugin's compile-only clients, ``jax.experimental.topologies``), so the real compiler's
memory plan, collectives and FLOPs of a round step can be read on a CPU machine:

* :mod:`fl_dp_asr.aot.targets`: named slices (``v5e-256``, ``v5p-128``, ``h100x8``, …), their
  chips' memory, peak FLOP/s and bandwidth, and their abstract devices;
* :mod:`fl_dp_asr.aot.hlo`: loop-aware FLOPs, memory traffic and collectives of a compiled
  program's optimized HLO;
* :mod:`fl_dp_asr.aot.abstract`: ``jax.ShapeDtypeStruct`` twins (with shardings) of a server
  state, a cohort block and a key, to lower a round step on such devices.

``fl-dp-asr-plan`` (:mod:`experiments.plan`) puts them together for a trainer config.
"""
