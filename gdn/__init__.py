"""Reproduction pipeline for μP hyperparameter transfer in Gated DeltaNet language models."""

__version__ = "0.1.0"
