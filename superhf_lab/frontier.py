"""``python -m superhf_lab.frontier``: every algorithm's reward-KL frontier (:mod:`superhf_lab.launch.frontier`)."""

from superhf_lab.launch.frontier import main

if __name__ == "__main__":
    main()
