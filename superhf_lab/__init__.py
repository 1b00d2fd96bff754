"""superhf_lab: Hydra-configured SuperHF and RLHF experiments tracked in MLflow."""

__version__ = "0.1.0"
