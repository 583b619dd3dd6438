"""fl_dp_asr: user-level DP federated learning of speech recognition in JAX."""
