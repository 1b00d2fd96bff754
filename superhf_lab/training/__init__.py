"""The shared training layer: run context, prompts, models, policies, sampling, scoring, sequences, losses, evaluation.

May import: core, runtime, config, tracking, metrics, tiny_world.
"""
