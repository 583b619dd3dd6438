r"""FL + user-level DP fine-tuning of the demo seed model on the synthetic Common Voice part.

    python -m experiments.train_fl --config experiments/configs/demo_fl_dp.py \
        --workdir runs/demo/fl_dp

Expects the synthetic corpus in ``data/synthetic`` (``python -m fl_dp_asr.data.synthetic
--out data/synthetic``) and the seed model of ``demo_central.py`` in
``runs/demo/central/checkpoints``. Expected runtime: ~4 minutes on 2 idle CPU cores
(8.6 minutes for 30 rounds with the cores shared; README, "Results").
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.progress_bar = True
    c.init_checkpoint = "runs/demo/central/checkpoints"

    c.data = ml_collections.ConfigDict()
    c.data.name = "common_voice_local"
    c.data.config = "en"
    c.data.language = "en"
    c.data.manual_dir = "data/synthetic"
    c.data.data_dir = "data/tfds"
    c.data.train_split = "train"
    c.data.eval_split = "dev"
    c.data.num_buckets = 2

    c.model = ml_collections.ConfigDict()
    c.model.size = "tiny"  # used only without init_checkpoint

    c.fl = ml_collections.ConfigDict()
    c.fl.rounds = 20
    c.fl.sampling = "poisson"      # or "fixed"; cohort_size is the expected size q·K
    c.fl.cohort_size = 16
    c.fl.executor = "vectorized"
    c.fl.chunk_size = 4          # vmap width; small chunks are fastest on CPU (docs/benchmarks.md)
    c.fl.local_steps = 3
    c.fl.local_batch_size = 4
    c.fl.max_batch_seconds = 0.0   # also cap a local batch's audio (seconds); 0: off
    c.fl.local_learning_rate = 0.2
    c.fl.local_grad_clip_norm = 1.0
    c.fl.max_local_epochs = 0      # 0: clients cycle through their data for every step

    c.dp = ml_collections.ConfigDict()
    c.dp.clipping = "per_layer"
    c.dp.clip_norm = 0.01
    c.dp.allocation = "by_dim"
    c.dp.noise_multiplier = config_dict.placeholder(float)  # z: std on the sum / clip_norm
    # The paper's protocol: simulate a small cohort with the noise on the mean (σ_DP, std on
    # the mean / C) that a large cohort S' of a large population K' would get (same q), and
    # report the privacy of (S', K') — privacy.target_*. z = S·σ_DP = 16·1e-4 here.
    c.dp.sigma_dp = 1e-4
    c.dp.delta = 1e-6              # < 1/K' of the extrapolated population
    c.dp.max_epsilon = 0.0         # 0: no budget

    c.server = ml_collections.ConfigDict()
    c.server.optimizer = "lamb"
    c.server.learning_rate = 0.01  # the paper: 0.002 over 2000 rounds; 30 rounds here
    c.server.decay_begin = config_dict.placeholder(int)
    c.server.decay_every = 750
    c.server.decay_rate = 0.6

    c.privacy = ml_collections.ConfigDict()
    c.privacy.target_cohort = 10_000       # S' = z'/σ_DP with z' = 1 (0: off)
    c.privacy.target_population = 187_500  # K' = S'/q, q = 16/300 as simulated
    c.privacy.target_pld = True        # also the PLD ε of the extrapolated setting

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 10
    c.eval.batch_size = 16
    c.eval.pld = False                 # also the PLD ε of the run itself (Poisson only)

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 10
    c.checkpoint.keep = 2

    # JAX multi-process run (pods, clusters; README "Beyond one host"): every process runs
    # the same command with its own process_id and packs only its own clients.
    c.distributed = ml_collections.ConfigDict()
    c.distributed.num_processes = 1        # 1: one process; 0: detect (Cloud TPU, SLURM, MPI)
    c.distributed.process_id = 0
    c.distributed.coordinator_address = ""  # "host:port" of process 0 (num_processes > 1)
    return c
