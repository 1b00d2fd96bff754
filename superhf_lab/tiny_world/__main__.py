"""``python -m superhf_lab.tiny_world [--dir DIR] [--force] [--check-reproducible]``: build the tiny world (or find it
cached); ``--check-reproducible`` builds it twice from scratch in temporary folders and compares every file."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from superhf_lab.tiny_world.build import DEFAULT_DIRECTORY, ensure_tiny_world, world_digest


def check_reproducible() -> int:
    """Two fresh builds, file by file (SHA-256; the build report's timings aside); 0 when they are identical."""
    with tempfile.TemporaryDirectory() as folder:
        digests = [world_digest(ensure_tiny_world(Path(folder) / name, force=True).root) for name in ("a", "b")]
    differing = sorted(
        name for name in digests[0].keys() | digests[1].keys() if digests[0].get(name) != digests[1].get(name)
    )
    for name in differing:
        print(f"differs: {name}")
    print(f"{len(digests[0])} files, {len(differing)} differ: {'identical' if not differing else 'NOT identical'}")
    return 1 if differing else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m superhf_lab.tiny_world", description=__doc__)
    parser.add_argument("--dir", default=str(DEFAULT_DIRECTORY), help="where the world lives (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even if an identical world is cached")
    parser.add_argument(
        "--check-reproducible", action="store_true", help="build twice from scratch and compare every file"
    )
    args = parser.parse_args(argv)
    if args.check_reproducible:
        sys.exit(check_reproducible())
    paths = ensure_tiny_world(args.dir, force=args.force)
    for name in ("root", "policy", "reward_model", "train_prompts", "test_prompts"):
        print(f"{name:>13}: {getattr(paths, name)}")
    report = json.loads(paths.report_file.read_text())
    print(f"{'built in':>13}: {report['seconds']['total']:.0f}s (fingerprint {report['fingerprint']})")


if __name__ == "__main__":
    main()
