"""Entry point in a checkout: ``python run.py [overrides]`` or ``python run.py -m kl_coef=0,0.1,0.35`` for a sweep.

The same command line as ``superhf-lab`` once installed (superhf_lab/launch/cli.py).
"""

from superhf_lab.launch.cli import main

if __name__ == "__main__":
    main()
