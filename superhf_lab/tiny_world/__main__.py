"""``python -m superhf_lab.tiny_world [--dir DIR] [--force]``: build the tiny world (or find it cached)."""

from __future__ import annotations

import argparse
import json

from superhf_lab.tiny_world.build import DEFAULT_DIRECTORY, ensure_tiny_world


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m superhf_lab.tiny_world", description=__doc__)
    parser.add_argument("--dir", default=str(DEFAULT_DIRECTORY), help="where the world lives (default: %(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild even if an identical world is cached")
    args = parser.parse_args(argv)
    paths = ensure_tiny_world(args.dir, force=args.force)
    for name in ("root", "policy", "reward_model", "train_prompts", "test_prompts"):
        print(f"{name:>13}: {getattr(paths, name)}")
    report = json.loads(paths.report_file.read_text())
    print(f"{'built in':>13}: {report['seconds']['total']:.0f}s (fingerprint {report['fingerprint']})")


if __name__ == "__main__":
    main()
