"""Training prompts: hh-rlhf-formatted prompts read from JSON lines, served in a seeded shuffled stream."""

from __future__ import annotations

import json
import random
from pathlib import Path

from superhf_lab.config import ConfigError, DataConfig


class DataFileError(ValueError):
    """A prompt file that is missing, empty or malformed; the message names the file and line."""


def read_prompts(path: Path, key: str) -> list[str]:
    """Prompts from a file of ``{"prompt": "\\n\\nHuman: ...\\n\\nAssistant:"}`` lines."""
    if not path.is_file():
        raise ConfigError(f"{key}={str(path)!r} is invalid: no such file")
    prompts = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                prompt = record["prompt"]
            except (json.JSONDecodeError, TypeError, KeyError) as error:
                raise DataFileError(
                    f"{path}:{number}: expected a JSON object with a 'prompt' string ({type(error).__name__}: {error})"
                ) from None
            if not isinstance(prompt, str) or not prompt.strip():
                raise DataFileError(f"{path}:{number}: 'prompt' must be a non-empty string")
            prompts.append(prompt)
    if not prompts:
        raise DataFileError(f"{path}: holds no prompts")
    return prompts


def load_training_prompts(config: DataConfig) -> list[str]:
    """The configured prompts without those over ``max_prompt_chars`` (the paper drops them)."""
    prompts = read_prompts(Path(config.train_path), "data.train_path")
    kept = [prompt for prompt in prompts if len(prompt) <= config.max_prompt_chars]
    if not kept:
        raise ConfigError(
            f"data.max_prompt_chars={config.max_prompt_chars} is invalid: it drops all {len(prompts)} prompts "
            f"of {config.train_path}; raise it"
        )
    return kept


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
