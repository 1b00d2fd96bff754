"""Everything MLflow and Optuna store: the tracker and its spool, records, store queries and provenance tags.

May import: core, runtime, config.
"""
