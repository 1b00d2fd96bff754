"""``python -m superhf_lab.bench``: time one superbatch's phases on the tiny world (one JSON line) (:mod:`superhf_lab.launch.bench`)."""

from superhf_lab.launch.bench import main

if __name__ == "__main__":
    main()
