"""``python -m superhf_lab.results``: the README's results table (:mod:`superhf_lab.launch.results`)."""

from superhf_lab.launch.results import main

if __name__ == "__main__":
    main()
