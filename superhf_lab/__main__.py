"""``python -m superhf_lab [overrides]``: the same as ``superhf-lab`` and ``python run.py``."""

from superhf_lab.cli import main

main()
