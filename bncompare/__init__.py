"""bncompare: train networks with and without Batch Normalization from a YAML config, and compare."""

__version__ = "0.1.0"
