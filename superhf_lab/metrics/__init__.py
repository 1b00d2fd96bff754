"""Metrics of text that every algorithm logs under one definition (METEOR, distinct-n, intervals), and their background bookkeeping.

May import: core, runtime, config, tracking.
"""
