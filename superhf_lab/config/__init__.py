"""The run's schema (typed dataclasses with their defaults), where the packaged configs live, and the run's fingerprint.

May import: core, runtime.
"""
