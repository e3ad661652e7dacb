"""Streams (ordered experiences) and their Avalanche benchmarks of tokenised causal-LM data."""
