"""The run's schema (typed dataclasses with their defaults and each key's meaning), those defaults as Hydra's
``run_defaults``, the key tables generated from them, where the packaged configs live, and the run's fingerprint.

May import: core, runtime.
"""
