"""How a run survives its machine: processes (distributed), checkpoints and the run folder, memory.

May import: core.
"""
