"""The blocks of README.md that commands write between a pair of markers (the results table, the config keys)."""

from __future__ import annotations

from pathlib import Path


def _split(text: str, begin: str, end: str, where: Path | str) -> tuple[str, str, str]:
    """(before the block with ``begin``, the block, ``end`` and after it); missing markers are a clear error."""
    if begin not in text or end not in text.split(begin, 1)[1]:
        raise SystemExit(f"{where} has no '{begin}' ... '{end}' markers to put the block between")
    head, rest = text.split(begin, 1)
    block, tail = rest.split(end, 1)
    return head + begin, block, end + tail


def read_block(text: str, begin: str, end: str, where: Path | str = "README.md") -> str:
    """What stands between the markers."""
    return _split(text, begin, end, where)[1]


def write_block(readme: Path, begin: str, end: str, block: str) -> None:
    """Replace what stands between the markers of ``readme``: ``begin``, a newline, ``block``, ``end``."""
    head, _, tail = _split(readme.read_text(), begin, end, readme)
    readme.write_text(f"{head}\n{block}{tail}")
