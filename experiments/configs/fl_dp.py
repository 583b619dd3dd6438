r"""FL + user-level DP fine-tuning: the paper's recipe, and its CPU demo variant.

Paper (arXiv 2310.00098): LibriSpeech-100 seed → Common Voice en::

    python -m experiments.train_fl --config experiments/configs/fl_dp.py \
        --workdir runs/paper/fl_dp_cv --config.data.manual_dir=/path/to/cv-corpus-13.0

Cohort S = 1024 (Poisson, expected size), 10 local SGD steps (lr 0.2, per-step gradient
clip 1.0, batches of ≈120 s of audio), per-layer clipping C = 0.01, LAMB server (lr 0.002,
exponential decay by 0.6 every 750 rounds from round 750), 2000 rounds, δ = 1e-9, σ_DP = 3e-6
extrapolated to S' = 204,800 users per round out of K' = 69.5 M. Needs the paper-size seed
model (``central.py``) and an accelerator: about 255 M parameters, expected runtime days on
one GPU.

Demo (``make demo``, step 3): the ``tiny`` seed model of ``central.py:demo`` on the synthetic
Common Voice part::

    python -m experiments.train_fl --config experiments/configs/fl_dp.py:demo \
        --workdir runs/demo/fl_dp

Expects the synthetic corpus in ``data/synthetic`` and the seed model in
``runs/demo/central/checkpoints``. 20 rounds of an expected 16 of 300 users: ~4 minutes on
2 idle CPU cores (README, "Results").

Privacy: ``dp.*`` holds every privacy setting: the clipping and noise (the fields of
:class:`fl_dp_asr.dp.DPConfig`), δ and the ε budget of the run, which accountants report ε,
and the extrapolated deployment (S', K'). The accountant follows from the cohort sampler
(``fl.sampling`` and ``fl.cohort_size``): the sampler's own DP event, so they cannot disagree.
"""

import ml_collections

from experiments.configs import common


def get_config(variant: str = "paper") -> ml_collections.ConfigDict:
    """The paper's FL + DP fine-tuning, or its ``demo`` variant (see the module docstring)."""
    common.check_variant(variant, "fl_dp.py")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.progress_bar = True
    # The seed model (None: from scratch).
    c.init_checkpoint = common.optional(str, "runs/paper/central_ls100/checkpoints")

    c.data = common.data(
        "common_voice_local",
        manual_dir="/data/common_voice",  # cv-corpus-*/en/
        data_dir="/data/tfds",
        train_config="en",
        train_split="train",
        eval_config="en",
        eval_split="dev",
        num_buckets=4,
    )

    c.model = common.model("paper")  # used only without init_checkpoint
    # Recompute each block in the backward pass: the paper model's local training then fits
    # an accelerator with room for a chunk of clients (docs/performance.md, "Planning").
    c.model.remat = True

    c.fl = ml_collections.ConfigDict()
    c.fl.rounds = 2000
    c.fl.sampling = "poisson"  # or "fixed", "cyclic": the cohort sampler, its DP analysis
    c.fl.min_separation = common.optional(int)  # cyclic: b, rounds between a user's turns
    c.fl.cohort_size = 1024  # S (Poisson: the expected size q·K)
    # "auto": sharded over every device when there are several, else vectorized; or
    # "vectorized", "sharded", "sequential" (fl_dp_asr.fl.executors)
    c.fl.executor = "auto"
    # Clients per vmap (per device). None: of the chunks that fit the device's memory, the
    # one with the least compiled work per round, found at start-up by compiling the round
    # step (fl-dp-asr-plan's search; 16 on a CPU).
    c.fl.chunk_size = common.optional(int)
    # Split the server state (params, optimizer moments, DP-FTRL buffers) over the devices
    # instead of replicating it (ZeRO; needs several devices): for models whose state crowds
    # a chip (docs/performance.md, "Planning for TPU and GPU").
    c.fl.shard_server_state = False
    c.fl.local_steps = 10
    c.fl.local_batch_size = 48  # padded utterances per local batch
    c.fl.max_batch_seconds = common.optional(float, 120.0)  # cap a local batch's audio (s)
    c.fl.local_learning_rate = 0.2
    c.fl.local_grad_clip_norm = 1.0
    c.fl.max_local_epochs = common.optional(int)  # None: cycle through the data
    # Each local step runs on the smallest cut of its padded batch that holds its real
    # utterances: rows B, B/2, B/4 … (cut_row_levels of them) × audio L, L/2 …
    # (cut_length_levels); one compiled copy of the local step per cut (docs/performance.md,
    # "Per-step padding cuts"). 1 and 1: no cuts, one copy — here, because compiling the
    # 255 M-parameter model is what limits it on a GPU today; the demo uses 3 × 2.
    c.fl.cut_row_levels = 1
    c.fl.cut_length_levels = 1

    c.dp = ml_collections.ConfigDict()
    c.dp.clipping = "per_layer"  # "none", "global", "per_layer", "rescale_per_layer"
    c.dp.clip_norm = 0.01
    c.dp.allocation = "uniform"  # "uniform" or "by_dim"
    c.dp.layers = "leaf"  # per-layer clipping's layers: "leaf" or "module"
    # Adaptive clipping (README "Adaptive clipping"): γ, the unclipped quantile each bound
    # tracks (None: fixed bounds; clip_norm is then the initial bound), its learning rate η
    # and the clipped-count noise σ_b (None: S/20). noise_multiplier/sigma_dp stay the
    # overall z of the round.
    c.dp.target_unclipped_quantile = common.optional(float)
    c.dp.clip_norm_lr = 0.2
    c.dp.clipped_count_stddev = common.optional(float)
    # "gaussian" (fresh noise every round) or DP-FTRL's correlated noise, "blt" or
    # "banded_toeplitz" (needs fl.sampling="cyclic"; fl_dp_asr.dp.correlated)
    c.dp.mechanism = "gaussian"
    c.dp.bands = common.optional(int)  # banded_toeplitz: bands (None: min_separation)
    c.dp.max_buffers = 10  # blt: most buffers the strategy may use
    c.dp.strategy_rounds = common.optional(int)  # n the strategy is built for (None: fl.rounds)
    c.dp.noise_multiplier = common.optional(float)  # z: std on the sum / clip_norm
    # The paper's protocol: simulate a cohort S with the noise on the mean (σ_DP, std on the
    # mean / C) that a large cohort S' of a large population K' would get (same q), and report
    # the privacy of (S', K'). z = S·σ_DP = 1024 × 3e-6 here.
    c.dp.sigma_dp = common.optional(float, 3e-6)
    c.dp.delta = 1e-9
    c.dp.max_epsilon = common.optional(float)  # stop before exceeding it (None: no budget)
    c.dp.pld = False  # also the PLD ε of the run (Poisson only; slow at T=2000)
    c.dp.target_cohort = common.optional(int, 204_800)  # S' of the extrapolation (None: off)
    c.dp.target_population = common.optional(int, 69_500_000)  # K'
    c.dp.target_pld = True  # also the PLD ε of the extrapolated setting

    c.server = ml_collections.ConfigDict()
    c.server.optimizer = "lamb"  # "sgd", "adam" or "lamb"
    c.server.learning_rate = 0.002
    c.server.decay_begin = common.optional(int, 750)  # None: constant learning rate
    c.server.decay_every = 750
    c.server.decay_rate = 0.6

    # Canary clients (README "Empirical privacy: canary clients"): k extra users of the
    # sampler whose updates are random directions at the clip norm; the run ends with two
    # empirical ε (final model, all iterates) next to the accountant's. 0: off.
    c.audit = ml_collections.ConfigDict()
    c.audit.canaries = 0  # k inserted canary clients (>= 2 when on)
    c.audit.heldout = common.optional(int)  # m directions never inserted (None: k)
    c.audit.seed = 0  # fixes the canaries' directions
    # Canary utterances (README "Memorization audit"): sped-up random texts inserted r times
    # into k users' data; their CER/exposure/AUC measured at every evaluation. Off: per_repeat 0.
    c.audit.utterances = common.utterance_canaries()

    c.eval = ml_collections.ConfigDict({"every": 100, "batch_size": 64})
    c.checkpoint = ml_collections.ConfigDict({"every": 50, "keep": 3})  # keep: last K (+ best)

    # JAX multi-process run (pods, clusters; README "Beyond one host"): every process runs
    # the same command with its own process_id and packs only its own clients.
    c.distributed = ml_collections.ConfigDict()
    c.distributed.num_processes = 1  # 1: one process; 0: detect (Cloud TPU, SLURM, MPI)
    c.distributed.process_id = 0
    c.distributed.coordinator_address = common.optional(str)  # "host:port" of process 0
    # A process silent this long is dead: the others stop (JAX's heartbeat; a killed
    # process's peers see its connections close and stop at their next collective).
    c.distributed.heartbeat_timeout_s = 100
    if variant == "demo":
        _shrink_to_demo(c)
    return c


def _shrink_to_demo(c: ml_collections.ConfigDict) -> None:
    """The CPU demo: 20 rounds of an expected 16 of the 300 synthetic users."""
    c.init_checkpoint = "runs/demo/central/checkpoints"
    c.data.manual_dir = "data/synthetic"
    c.data.data_dir = "data/tfds"
    c.data.synthetic_dir = "data/synthetic"  # generated there if missing
    c.data.num_buckets = 2
    c.model = common.model("tiny")
    c.fl.rounds = 20
    c.fl.cohort_size = 16
    c.fl.chunk_size = 4  # small chunks are fastest on CPU (docs/benchmarks.md)
    c.fl.local_steps = 3
    c.fl.local_batch_size = 4
    c.fl.max_batch_seconds = None
    c.fl.cut_row_levels, c.fl.cut_length_levels = 3, 2  # 2.2x faster rounds on CPU
    c.dp.allocation = "by_dim"
    c.dp.sigma_dp = 1e-4  # z = S·σ_DP = 16 × 1e-4
    c.dp.delta = 1e-6  # < 1/K' of the extrapolated population
    c.dp.target_cohort = 10_000  # S' = z'/σ_DP with z' = 1
    c.dp.target_population = 187_500  # K' = S'/q, q = 16/300 as simulated
    c.server.learning_rate = 0.01  # the paper: 0.002 over 2000 rounds; 20 rounds here
    c.server.decay_begin = None
    c.eval.every = 10
    c.eval.batch_size = 16
    c.checkpoint.every = 10
    c.checkpoint.keep = 2
