"""Starting runs: the command line, the runner, sweeps and studies, the results table and the benchmark.

May import: every other layer.
"""
