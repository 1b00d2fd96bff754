"""``python -m superhf_lab.bench``: a superbatch's phases timed on the tiny world (:mod:`superhf_lab.launch.bench`)."""

from superhf_lab.launch.bench import main

if __name__ == "__main__":
    main()
