"""One config and one trainer per algorithm, registered by name; the TRL glue the TRL-based ones share.

May import: core, runtime, config, tracking, metrics, training, tiny_world.
"""
