"""Prompts: the paper's hh-rlhf and WebGPT sources (Hugging Face Hub or local files), mixed, filtered and
split as the reference (openfeedback/superhf ``get_superhf_prompts``) does, served in a seeded shuffled stream;
and preference pairs (prompt, chosen and rejected response) from the same row formats, for the algorithms that
learn from human preferences directly (DPO, FeedME).

Every prompt is a first human turn in hh-rlhf text format, ``"\\n\\nHuman: ...\\n\\nAssistant:"``; a pair's prompt
is the whole conversation before its last assistant turn.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import random
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Any, Optional, TextIO

from superhf_lab.config.schema import DataConfig, DataSourceConfig
from superhf_lab.core.errors import ConfigError

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"
SPLITS = ("train", "test")
_GZIP_MAGIC = b"\x1f\x8b"
_ARRAY_READ_CHARS = 1 << 16  # how much more of a JSON array to read when an item is still incomplete
_QUOTED_ROW_CHARS = 200  # how much of a malformed row a message quotes
_PARQUET_BRANCH = "refs/convert/parquet"  # the Hub's parquet conversion of a dataset, scripts included

log = logging.getLogger(__name__)

Row = tuple[str, Any]  # (where it came from, for error messages: "file:line" or "hub split row N"; the row)


class DataFileError(ValueError):
    """A prompt file that is unreadable, empty or malformed; the message names the file and line."""


class MalformedRowsError(ConfigError, DataFileError):
    """More malformed rows in a source than ``max_malformed_fraction`` tolerates: bad data (it names the first
    bad row) and a setting to change (it names the key)."""


@dataclass
class PromptSet:
    """A split's prompts in mixed order, which source each came from, how many each source gave, and how many
    malformed rows each skipped."""

    prompts: list[str]
    sources: list[str]
    counts: dict[str, int]
    skipped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PreferencePair:
    """A conversation so far and two responses to it, ``chosen`` preferred over ``rejected`` by a human."""

    prompt: str
    chosen: str
    rejected: str


@dataclass
class PairSet:
    """A split's preference pairs in mixed order, which source each came from, how many each source gave, and
    how many malformed rows each skipped."""

    pairs: list[PreferencePair]
    sources: list[str]
    counts: dict[str, int]
    skipped: dict[str, int] = field(default_factory=dict)


def _first_turn(conversation: Any) -> str:
    if not (isinstance(conversation, str) and conversation.startswith(HUMAN) and ASSISTANT in conversation):
        raise ValueError("not a '\\n\\nHuman: ...\\n\\nAssistant: ...' conversation")
    return conversation.split(ASSISTANT, 1)[0] + ASSISTANT


def _non_empty(text: Any) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("not a non-empty string")
    return text


def _instruction(prompt: Any) -> str:
    """A yizhongw/self_instruct ``prompt`` without its "Output:" tail, as the reference trainer reads it."""
    if not isinstance(prompt, str):
        raise TypeError("not a string")
    return _non_empty(prompt.split("Output:")[0].strip())


# kind -> (what a row must hold, for error messages; how a row becomes a prompt)
ROW_FORMATS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "hh_rlhf": ("a 'chosen' conversation", lambda row: _first_turn(row["chosen"])),
    "hh_red_team": ("a 'transcript' conversation", lambda row: _first_turn(row["transcript"])),
    "webgpt": (
        "a 'question' object with a 'full_text' string",
        lambda row: f"{HUMAN} {_non_empty(row['question']['full_text'])}{ASSISTANT}",
    ),
    "self_instruct": (
        "a 'prompt' string with an instruction before 'Output:'",
        lambda row: f"{HUMAN} {_instruction(row['prompt'])}{ASSISTANT}",
    ),
    "prompts": ("a non-empty 'prompt' string", lambda row: _non_empty(row["prompt"])),
}


def _hh_pair(row: Any) -> PreferencePair | None:
    """Chosen and rejected conversations share everything before the last assistant turn; None when they diverge
    earlier (a few hh-rlhf rows) or are the same."""
    chosen, rejected = _non_empty(row["chosen"]), _non_empty(row["rejected"])
    _first_turn(chosen)
    cut = chosen.rindex(ASSISTANT) + len(ASSISTANT)
    if not rejected.startswith(chosen[:cut]) or chosen == rejected:
        return None
    return PreferencePair(chosen[:cut], chosen[cut:], rejected[cut:])


def _webgpt_pair(row: Any) -> PreferencePair | None:
    """The answer with the higher score is chosen; None for a tie (no preference)."""
    prompt = f"{HUMAN} {_non_empty(row['question']['full_text'])}{ASSISTANT}"
    scores, answers = (row["score_0"], row["score_1"]), (_non_empty(row["answer_0"]), _non_empty(row["answer_1"]))
    if scores[0] == scores[1]:
        return None
    better = 0 if scores[0] > scores[1] else 1
    return PreferencePair(prompt, " " + answers[better].strip(), " " + answers[1 - better].strip())


# kind -> (what a row must hold; the row as a preference pair, or None for a row without a preference)
PAIR_FORMATS: dict[str, tuple[str, Callable[[Any], PreferencePair | None]]] = {
    "hh_rlhf": ("'chosen' and 'rejected' conversations", _hh_pair),
    "webgpt": ("a 'question' with 'full_text', 'answer_0', 'answer_1', 'score_0' and 'score_1'", _webgpt_pair),
}


def _matches(row: Any, conditions: dict[str, str]) -> bool:
    return isinstance(row, dict) and all(str(row.get(field)) == value for field, value in conditions.items())


def read_rows(path: Path) -> Iterator[Row]:
    """The JSON rows of a .jsonl or .jsonl.gz file, or of a file holding one JSON array (the hub's
    red-team-attempts format), read as they are needed so that a capped count stops early."""
    lines = _NumberedLines(path)
    rows_seen = 0
    try:
        first_line = next((line for line in lines if line.strip()), None)
        if first_line is not None:
            rest = chain([first_line], lines)
            parse = _array_rows if first_line.lstrip().startswith("[") else _jsonl_rows
            for rows_seen, row in enumerate(parse(rest, lines, path), start=1):
                yield row
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as error:  # gzip raises OSError subclasses too
        raise DataFileError(
            f"{path}:{lines.number + 1}: cannot be read ({type(error).__name__}: {error}); if the file is truncated "
            "or corrupt, download it again"
        ) from None
    if rows_seen == 0:
        raise DataFileError(f"{path}: holds no JSON rows")


class _NumberedLines:
    """The lines of a plain or gzip-compressed text file, remembering the current line's number."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.number = 0
        self._lines = self._read()

    def _read(self) -> Iterator[str]:
        with _open_text(self.path) as text:
            for self.number, line in enumerate(text, start=1):
                yield line

    def __iter__(self) -> Iterator[str]:
        return self._lines


def _open_text(path: Path) -> TextIO:
    with path.open("rb") as probe:
        compressed = probe.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rt", encoding="utf-8") if compressed else path.open(encoding="utf-8")


def _jsonl_rows(lines: Iterator[str], numbered: _NumberedLines, path: Path) -> Iterator[Row]:
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataFileError(f"{path}:{numbered.number}: expected a JSON object on each line ({error})") from None
        yield f"{path}:{numbered.number}", row


def _array_rows(lines: Iterator[str], numbered: _NumberedLines, path: Path) -> Iterator[Row]:
    """Items of a JSON array, decoded one at a time from a buffer that holds only the unread part."""
    decoder = json.JSONDecoder()
    buffer, position, buffer_line = "", 0, numbered.number  # buffer_line: the line buffer[0] is on

    def read_more(at_least: int) -> bool:
        nonlocal buffer
        added = ""
        for line in lines:
            added += line
            if len(added) >= at_least:
                break
        buffer += added
        return bool(added)

    def line_at(index: int) -> int:
        return buffer_line + buffer.count("\n", 0, index)

    def next_char() -> str:
        nonlocal position
        while True:
            while position < len(buffer) and buffer[position].isspace():
                position += 1
            if position < len(buffer) or not read_more(1):
                return buffer[position] if position < len(buffer) else ""

    def fail(index: int, expected: str) -> DataFileError:
        return DataFileError(f"{path}:{line_at(index)}: expected {expected} in this JSON array file")

    if next_char() != "[":
        raise fail(position, "'['")
    position += 1
    if next_char() == "]":
        return
    while True:
        next_char()
        while True:
            try:
                item, end = decoder.raw_decode(buffer, position)
                break
            except json.JSONDecodeError as error:
                if not read_more(max(len(buffer) - position, _ARRAY_READ_CHARS)):
                    raise fail(error.pos, f"a JSON object ({error.msg})") from None
        yield f"{path}:{line_at(position)}", item
        buffer_line = line_at(end)
        buffer, position = buffer[end:], 0
        separator = next_char()
        position += 1
        if separator == "]":
            if next_char():
                raise fail(position, "nothing after the closing ']'")
            return
        if separator != ",":
            raise fail(position - 1, "',' or ']'")


def _hub_rows(source: DataSourceConfig, split: str, key: str) -> Iterator[Row]:
    """Rows streamed from the Hugging Face Hub, so a capped count downloads only what it needs."""
    from datasets import load_dataset

    try:
        rows = load_dataset(
            source.hub_name, data_dir=source.hub_data_dir, revision=source.hub_revision, split=split, streaming=True
        )
    except (ConnectionError, FileNotFoundError, RuntimeError) as error:
        failure = _hub_failure(error, source, key)
        if failure is None:
            raise
        raise failure from None
    label = "/".join(part for part in (source.hub_name, source.hub_data_dir) if part)
    index = -1
    for index, row in enumerate(rows):
        yield f"{label} ({split} split) row {index}", row
    if index < 0:
        raise DataFileError(f"{label} ({split} split): holds no rows")


def _hub_failure(error: Exception, source: DataSourceConfig, key: str) -> ConfigError | None:
    """Why ``load_dataset`` refused a hub source, as the key to change and the fix; None for an error that no
    setting explains."""
    from datasets.data_files import EmptyDatasetError
    from datasets.exceptions import DataFilesNotFoundError

    name, revision, cause = source.hub_name, source.hub_revision, f"({type(error).__name__}: {error})"
    local = f"set {key}.path to a local copy in the hub's row format"
    other_revision = (
        f"set {key}.hub_revision to another revision (null: the main branch; {_PARQUET_BRANCH}: "
        "the Hub's parquet conversion)"
    )
    if isinstance(error, ConnectionError):
        return ConfigError(f"{key}.hub_name={name!r} is unreachable ({error}); connect to the internet, or {local}")
    if isinstance(error, RuntimeError):
        if "Dataset scripts are no longer supported" not in str(error):
            return None
        parquet = (
            ""
            if revision == _PARQUET_BRANCH
            else (f"set {key}.hub_revision={_PARQUET_BRANCH} (the Hub's parquet conversion of it), or ")
        )
        return ConfigError(
            f"{key}.hub_revision={revision!r} is invalid: {name} at this revision is a loading "
            f"script, which datasets>=4 cannot run {cause}; {parquet}{local}"
        )
    if "is a gated dataset" in str(error):
        return ConfigError(
            f"{key}.hub_name={name!r} is invalid: it is a gated dataset {cause}; accept its terms at "
            f"https://huggingface.co/datasets/{name} and log in (hf auth login), or {local}"
        )
    if isinstance(error, (EmptyDatasetError, DataFilesNotFoundError)):
        return ConfigError(
            f"{key}.hub_data_dir={source.hub_data_dir!r} is invalid: {name} holds no data files there "
            f"{cause}; check the folder name, {other_revision}, or {local}"
        )
    if str(error).startswith("Revision"):
        return ConfigError(
            f"{key}.hub_revision={revision!r} is invalid: {name} has no such revision {cause}; "
            f"{other_revision}, or {local}"
        )
    return ConfigError(f"{key}.hub_name={name!r} is invalid: no such dataset {cause}; check the name, or {local}")


def _shortened(row: Any) -> str:
    text = json.dumps(row, ensure_ascii=False, default=str)
    return text if len(text) <= _QUOTED_ROW_CHARS else text[:_QUOTED_ROW_CHARS] + "..."


def _all_but_last(rows: Iterator[Row], held_out: int) -> Iterator[Row]:
    """Every row except the last ``held_out``, found with a lookahead instead of reading the source first."""
    lookahead: deque[Row] = deque()
    for row in rows:
        lookahead.append(row)
        if len(lookahead) > held_out:
            yield lookahead.popleft()


class _SourceReader:
    """One source's items (prompts, or preference pairs) for one split, read lazily, with the tallies that
    explain a shortfall or a skipped row. ``section`` is the config section the source sits in, for messages."""

    def __init__(
        self, name: str, source: DataSourceConfig, split: str, config: DataConfig, formats: dict, section: str
    ) -> None:
        self.section = section
        self.key = f"{section}.sources.{name}"
        self.source = source
        self.split = split
        self.max_prompt_chars = config.max_prompt_chars
        self.max_malformed_fraction = config.max_malformed_fraction
        self.formats = formats
        self.rows_read = 0
        self.too_long = 0
        self.parsed = 0  # rows given to the row format, after the split and `where`
        self.malformed = 0  # of those, rows it could not turn into an item: skipped
        self.first_malformed = ""  # where the first one is, what it lacks, and the row, for messages

    def items(self) -> Iterator[str | PreferencePair]:
        """Items whose prompt has at most ``max_prompt_chars`` characters; without its own test split, a source's
        last ``test_size`` rows are its test set (as the reference's ``[:-2300]``)."""
        rows = self._counted(self._split_rows())
        if not self.source.has_test_split:
            held_out = self.source.test_size
            rows = _all_but_last(rows, held_out) if self.split == "train" else iter(deque(rows, maxlen=held_out))
        description, to_item = self.formats[self.source.kind]
        for where, row in rows:
            if self.source.where and not _matches(row, self.source.where):
                continue
            self.parsed += 1
            try:
                item = to_item(row)
            except (KeyError, TypeError, ValueError) as error:
                self._skip_malformed(where, row, f"{description} ({type(error).__name__}: {error})")
                continue
            if item is None:
                continue
            if len(item if isinstance(item, str) else item.prompt) > self.max_prompt_chars:
                self.too_long += 1
                continue
            yield item

    def _split_rows(self) -> Iterator[Row]:
        own_test_split = self.source.has_test_split and self.split == "test"
        if not self.source.path:
            return _hub_rows(self.source, "test" if own_test_split else "train", self.key)
        key, path = f"{self.key}.path", self.source.path
        if own_test_split:
            key, path = f"{self.key}.test_path", self.source.test_path
        if path is None:
            raise ConfigError(
                f"{key}=None is invalid: this source has its own test split; give its local file, or set "
                f"{self.key}.has_test_split=false to hold out the last {self.source.test_size} rows of {self.key}.path"
            )
        if not Path(path).is_file():
            hub = f", or set {self.key}.path=null to read {self.source.hub_name} from the Hugging Face Hub"
            raise ConfigError(
                f"{key}={path!r} is invalid: no such file; give an existing .jsonl or .jsonl.gz file"
                + (hub if self.source.hub_name else "")
            )
        return read_rows(Path(path))

    def _counted(self, rows: Iterator[Row]) -> Iterator[Row]:
        for row in rows:
            self.rows_read += 1
            yield row

    def _skip_malformed(self, where: str, row: Any, expected: str) -> None:
        self.malformed += 1
        if self.malformed == 1:
            self.first_malformed = f"{where}: expected a JSON object with {expected}: {_shortened(row)}"

    def _check_malformed(self) -> None:
        """Malformed rows are skipped with a warning, unless more than ``max_malformed_fraction`` of the rows read
        are: then the source is too broken to train on."""
        if not self.malformed:
            return
        limit = f"{self.section}.max_malformed_fraction={self.max_malformed_fraction}"
        share = f"{self.malformed} of the {self.parsed} {self.split} rows read ({self.malformed / self.parsed:.1%})"
        if self.malformed > self.max_malformed_fraction * self.parsed:
            raise MalformedRowsError(
                f"{limit} is exceeded: {self.key} has {share} malformed; the first, {self.first_malformed}. Repair "
                f"or replace the source ({self.key}.path: a local copy in the row format), or raise "
                f"{self.section}.max_malformed_fraction to skip them"
            )
        log.warning("%s: skipped %s malformed (within %s); the first, %s", self.key, share, limit, self.first_malformed)

    def take(self, wanted: Optional[int], wanted_key: str, wanted_value: Any) -> list:
        """``wanted`` items (all when None); too few raises a ConfigError naming the key to change."""
        prompts = list(islice(self.items(), wanted))
        self._check_malformed()
        needed = 1 if wanted is None else wanted
        if len(prompts) >= needed:
            return prompts
        held_out = self.source.test_size
        if not prompts and not self.source.has_test_split:
            if self.split == "train" and self.rows_read <= held_out:
                raise ConfigError(
                    f"{self.key}.test_size={held_out} is invalid: the source has {self.rows_read} rows and its last "
                    "test_size rows are the test set, leaving none to train on; lower it"
                )
            if self.split == "test" and held_out == 0:
                raise ConfigError(f"{self.key}.test_size=0 is invalid: it holds out no test prompts; raise it")
        limit = f"{self.section}.max_prompt_chars={self.max_prompt_chars}"
        if not prompts and self.too_long:
            raise ConfigError(
                f"{limit} is invalid: it drops all {self.too_long} {self.split} prompts of {self.key}; raise it"
            )
        raise ConfigError(
            f"{wanted_key}={wanted_value} is invalid: {self.key} has {len(prompts)} {self.split} prompts of at most "
            f"{self.max_prompt_chars} characters ({limit}) and {needed} are needed; lower it"
        )


def _apportion(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Whole counts in proportion to ``weights`` that add up to ``total`` (largest remainders round up)."""
    weight_sum = sum(weights.values())
    exact = {name: total * weight / weight_sum for name, weight in weights.items()}
    counts = {name: math.floor(share) for name, share in exact.items()}
    by_remainder = sorted(exact, key=lambda name: exact[name] - counts[name], reverse=True)
    for name in by_remainder[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def _take_weighted(readers: dict[str, _SourceReader], config: DataConfig, section: str) -> dict[str, list]:
    weights = {name: reader.source.weight for name, reader in readers.items()}
    if config.total_prompts is not None:
        counts = _apportion(config.total_prompts, weights)
        return {
            name: reader.take(counts[name], f"{section}.total_prompts", config.total_prompts)
            for name, reader in readers.items()
        }
    # No total: the largest mix with these proportions, which the scarcest source (for its weight) limits.
    available = {
        name: reader.take(None, f"{reader.key}.weight", reader.source.weight) for name, reader in readers.items()
    }
    weight_sum = sum(weights.values())
    total = math.floor(min(len(available[name]) * weight_sum / weight for name, weight in weights.items()))
    return {name: available[name][:count] for name, count in _apportion(total, weights).items()}


def _load_mix(config: DataConfig, split: str, seed: int, formats: dict, section: str) -> tuple[list, list, dict, dict]:
    """Items, the source of each, the count per source and the malformed rows each skipped, of one split of a
    configured mix (see load_prompts)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: use one of {SPLITS}")
    active = {name: source for name, source in config.sources.items() if source.count != 0 and source.weight != 0}
    readers = {name: _SourceReader(name, source, split, config, formats, section) for name, source in active.items()}
    if split == "train" and any(source.weight is not None for source in active.values()):
        taken = _take_weighted(readers, config, section)
    else:
        counts = {name: source.count if split == "train" else None for name, source in active.items()}
        taken = {
            name: reader.take(counts[name], f"{reader.key}.count", counts[name]) for name, reader in readers.items()
        }
    mixed = [(item, name) for name, items in taken.items() for item in items]
    if config.shuffle:
        random.Random(seed).shuffle(mixed)
    counts = {name: len(taken.get(name, [])) for name in config.sources}
    skipped = {name: readers[name].malformed if name in readers else 0 for name in config.sources}
    return [item for item, _ in mixed], [name for _, name in mixed], counts, skipped


def load_prompts(config: DataConfig, split: str, seed: int) -> PromptSet:
    """The ``split`` ("train" or "test") of the configured mix, shuffled with ``seed`` when ``data.shuffle``.

    Sources with a ``count`` give their first ``count`` prompts (read no further), sources without one give
    all; weighted sources give ``data.total_prompts`` prompts in proportion to their weights (all that the
    proportions allow when it is null). The test split holds every mixed source's held-out prompts.
    """
    return PromptSet(*_load_mix(config, split, seed, ROW_FORMATS, "data"))


def load_pairs(config: DataConfig, split: str, seed: int) -> PairSet:
    """The ``split`` of the ``preferences`` mix as preference pairs, mixed exactly as :func:`load_prompts` mixes
    prompts (counts and weights are in pairs)."""
    return PairSet(*_load_mix(config, split, seed, PAIR_FORMATS, "preferences"))


def load_training_prompts(config: DataConfig, seed: int) -> PromptSet:
    return load_prompts(config, "train", seed)


class PromptStream:
    """Prompts in a seeded order; after the last one a fresh seeded shuffle starts the next epoch."""

    def __init__(self, prompts: list[str], seed: int, shuffle: bool = True) -> None:
        self.prompts = prompts
        self.seed = seed
        self.shuffle = shuffle
        self.position = 0  # prompts consumed so far, over all epochs
        self._cached_order: tuple[int, list[int]] = (-1, [])

    def _order(self, epoch: int) -> list[int]:
        if self._cached_order[0] != epoch:
            order = list(range(len(self.prompts)))
            if self.shuffle:
                random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
            self._cached_order = (epoch, order)
        return self._cached_order[1]

    def take(self, count: int) -> list[str]:
        taken = []
        for _ in range(count):
            epoch, index = divmod(self.position, len(self.prompts))
            taken.append(self.prompts[self._order(epoch)[index]])
            self.position += 1
        return taken
