"""Benchmarks: gating-normalization overhead, training throughput, inference speed and memory."""
