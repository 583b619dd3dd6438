"""Canary utterances in users' data and how much a trained model remembers of them."""
