"""``python -m superhf_lab [overrides]``: the same as ``superhf-lab`` and ``python run.py``."""

from superhf_lab.launch.cli import main

main()
