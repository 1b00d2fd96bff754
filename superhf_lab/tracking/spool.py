"""The spool: a run's unsent records in a local file, fsynced, synced later with their own steps and times."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import mlflow

from superhf_lab.core.faults import reach
from superhf_lab.tracking.records import json_default, send_records

log = logging.getLogger(__name__)

SYNC_COMMAND = "python -m superhf_lab.tracking sync"


def _spool_header(run_id: str, tracking_uri: str) -> str:
    return json.dumps({"kind": "run", "run_id": run_id, "tracking_uri": tracking_uri}) + "\n"


def append_to_spool(path: Path, run_id: str, tracking_uri: str, records: list[dict]) -> None:
    """Append records (after the header, for a new file), fsynced, so a crash loses none; a kill mid-append leaves
    a torn last line, which :func:`read_spool` drops (the ``spool_append`` fault point tears it on purpose)."""
    text = "".join(json.dumps(record, default=json_default) + "\n" for record in records)
    header = "" if path.exists() else _spool_header(run_id, tracking_uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    half = len(text) // 2
    with path.open("a", encoding="utf-8") as spool:
        for part, torn in ((header, False), (text[:half], True), (text[half:], False)):
            spool.write(part)
            spool.flush()
            os.fsync(spool.fileno())
            if torn:
                reach("spool_append")


def spool_files_dir(spool_path: Path) -> Path:
    """Where a spool keeps copies of the folders its ``artifacts`` records upload."""
    return spool_path.with_suffix(".files")


def write_spool(path: Path, run_id: str, tracking_uri: str, records: list[dict]) -> None:
    """Replace the spool file with ``records``, atomically; no records removes it and its copied folders."""
    if not records:
        path.unlink(missing_ok=True)
        shutil.rmtree(spool_files_dir(path), ignore_errors=True)
        return
    partial = path.with_suffix(".partial")
    with partial.open("w", encoding="utf-8") as spool:
        spool.write(_spool_header(run_id, tracking_uri))
        spool.writelines(json.dumps(record, default=json_default) + "\n" for record in records)
    partial.replace(path)


def read_spool(path: Path) -> tuple[dict, list[dict]]:
    """The spool file's header (run id, tracking URI) and its records. A torn last line (a kill during an append)
    is dropped with a warning; a bad line before it means the file was damaged otherwise, and is an error."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number < len(lines) or text.endswith("\n"):
                raise ValueError(
                    f"{path}:{number}: not a JSON record; the spool is damaged beyond a torn last line "
                    "(edit that line out to sync the rest)"
                ) from None
            log.warning("%s: dropping its torn last line (a process killed while appending it): %.80s", path, line)
    if not records or records[0].get("kind") != "run":
        raise ValueError(f"{path} is not a spool file written by superhf_lab.tracking (no run header)")
    return records[0], records[1:]


def sync_spool(path: Path, tracking_uri: str | None = None) -> int:
    """Send a spool file's records to its run; the file is removed when all are in. Returns the count sent."""
    header, records = read_spool(path)
    uri = tracking_uri or header["tracking_uri"]
    sent, error = send_records(mlflow.MlflowClient(tracking_uri=uri), header["run_id"], records)
    write_spool(path, header["run_id"], header["tracking_uri"], records[sent:])
    if error is not None:
        raise ConnectionError(
            f"MLflow at {uri} took {sent} of {len(records)} records ({str(error).splitlines()[0]}); "
            f"the rest stay in {path}"
        )
    return sent
