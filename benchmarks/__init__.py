"""The rivbulk benchmark (`make bench` = `python -m benchmarks.run`); not part of the tests.

Each measurement compares OURS (the pipeline's core) with a BASELINE that does what the
reference bulk loader did (`benchmarks.baseline`), on data generated in a temp dir.
"""
