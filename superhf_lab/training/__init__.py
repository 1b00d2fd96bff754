"""The shared training layer: the run context, prompts, models and policies, sampling, scoring, sequences and losses, evaluation.

May import: core, runtime, config, tracking, metrics, tiny_world.
"""
