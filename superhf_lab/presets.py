"""``python -m superhf_lab.presets``: the search behind the tiny presets (:mod:`superhf_lab.launch.presets`)."""

from superhf_lab.launch.presets import main

if __name__ == "__main__":
    main()
