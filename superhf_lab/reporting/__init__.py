"""Reading finished runs back: the end-of-run and sweep summaries, the report's tables and plots, README blocks.

May import: core, runtime, config, tracking, metrics.
"""
