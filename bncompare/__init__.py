"""bncompare: train networks with and without Batch Normalization from a YAML config, and compare."""

__version__ = "0.1.0"


def load(results_dir, **filters):
    """Every eval point of every finished run under `results_dir` as a pandas DataFrame, the rows
    of `bncompare export` (filters: include_running, where, experiment). See bncompare/export.py."""
    from bncompare.export import load as load_table  # pandas only when asked for

    return load_table(results_dir, **filters)
