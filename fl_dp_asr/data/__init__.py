"""Speech data: local corpora as TFDS datasets, the synthetic corpus, federated cohorts."""
