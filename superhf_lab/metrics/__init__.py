"""Metrics of text under one definition for every algorithm (METEOR, distinct-n, intervals, names); bookkeeping.

May import: core, runtime, config, tracking.
"""
