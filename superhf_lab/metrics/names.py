"""How the test-prompt evaluation names its metrics: ``eval/<scope>/<name>``, the scope ``all`` pooling every source."""

from __future__ import annotations

OVERALL = "all"


def eval_metric(name: str, scope: str = OVERALL) -> str:
    return f"eval/{scope}/{name}"
