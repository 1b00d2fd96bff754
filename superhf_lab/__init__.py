"""superhf_lab: Hydra-configured SuperHF and RLHF experiments tracked in MLflow.

Layers, each importing only those before it: core, runtime, config, tracking, metrics, reporting, training,
algorithms, launch (tiny_world stands apart). The modules here are the commands users type.
"""

__version__ = "0.1.0"
