"""python -m superhf_lab.tracking sync <spool file>: send what a run could not log while its server was down."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from superhf_lab.tracking.spool import sync_spool


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m superhf_lab.tracking",
        description="Send what a run could not log to MLflow while its server was down.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sync = commands.add_parser("sync", help="send a spool file's metrics, completions and run status to its run")
    sync.add_argument("spool_file", type=Path, help="mlflow-unsynced-<run id>.jsonl in the run's output folder")
    sync.add_argument("--tracking-uri", help="default: the URI the run logged to (in the file's first line)")
    args = parser.parse_args(argv)
    try:
        sent = sync_spool(args.spool_file, args.tracking_uri)
    except (OSError, ValueError) as error:  # ConnectionError is an OSError
        print(f"sync failed: {error}", file=sys.stderr)
        return 1
    print(f"synced {sent} records from {args.spool_file} (file removed)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
