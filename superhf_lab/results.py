"""``python -m superhf_lab.results``: the README's results table: each row x seed on the tiny world (:mod:`superhf_lab.launch.results`)."""

from superhf_lab.launch.results import main

if __name__ == "__main__":
    main()
