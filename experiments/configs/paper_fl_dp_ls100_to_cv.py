r"""The paper's FL + user-level DP fine-tuning: LibriSpeech-100 seed → Common Voice en.

    python -m experiments.train_fl --config experiments/configs/paper_fl_dp_ls100_to_cv.py \
        --workdir runs/paper/fl_dp_cv --config.data.manual_dir=/path/to/cv-corpus-13.0

Settings of arXiv 2310.00098: cohort S = 1024, 10 local SGD steps (lr 0.2, per-step gradient
clip 1.0, batches of ≈120 s of audio), per-layer clipping C = 0.01, LAMB server (lr 0.002,
exponential decay by 0.6 every 750 rounds from round 750), 2000 rounds, δ = 1e-9, σ_DP = 3e-6
extrapolated to S' = 204,800 users per round out of K' = 69.5 M. Needs the paper-size seed
model (paper_central_ls100.py) and an accelerator: about 255 M parameters, expected runtime
days on one GPU.
"""

from experiments.configs import demo_fl_dp


def get_config():
    c = demo_fl_dp.get_config()
    c.init_checkpoint = "runs/paper/central_ls100/checkpoints"
    c.data.manual_dir = "/data/common_voice"   # holds cv-corpus-*/en/ (official layout)
    c.data.data_dir = "/data/tfds"
    c.data.num_buckets = 4
    c.fl.rounds = 2000
    c.fl.sampling = "poisson"
    c.fl.cohort_size = 1024                     # expected cohort size q·K
    c.fl.chunk_size = 64
    c.fl.local_steps = 10
    c.fl.local_batch_size = 48                  # padded utterances per local batch
    c.fl.max_batch_seconds = 120.0              # ≈120 s of audio per local batch
    c.fl.local_learning_rate = 0.2
    c.fl.local_grad_clip_norm = 1.0
    c.dp.clipping = "per_layer"
    c.dp.allocation = "uniform"
    c.dp.clip_norm = 0.01
    c.dp.noise_multiplier = None
    c.dp.sigma_dp = 3e-6                        # z = S·σ_DP = 1024 × 3e-6
    c.dp.delta = 1e-9
    c.server.optimizer = "lamb"
    c.server.learning_rate = 0.002
    c.server.decay_begin = 750
    c.privacy.target_cohort = 204_800           # the extrapolated deployment (S', K')
    c.privacy.target_population = 69_500_000
    c.eval.every = 100
    c.eval.batch_size = 64
    c.eval.pld = False                          # PLD at T=2000 costs seconds; RDP each eval
    c.checkpoint.every = 50
    c.checkpoint.keep = 3
    return c
