"""``python -m superhf_lab.report``: tables and plots of runs and studies (:mod:`superhf_lab.reporting.report`)."""

from superhf_lab.reporting.report import main

if __name__ == "__main__":
    main()
