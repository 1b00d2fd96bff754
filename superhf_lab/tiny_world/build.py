"""Building the tiny world once per recipe and reusing it: ``ensure_tiny_world``.

The cached path imports nothing heavy (no torch, transformers or TRL), so asking for an existing
world costs milliseconds. A build happens under an exclusive file lock, in a temporary sibling
directory that is renamed into place only when complete, so an interrupted or concurrent build
never leaves a half-written world that looks finished.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console

from superhf_lab.tiny_world.recipe import TinyWorldRecipe

DEFAULT_DIRECTORY = Path(".cache/tiny_world")
RECIPE_FILE = "recipe.json"
REPORT_FILE = "build_report.json"
_PACKAGE_DIR = Path(__file__).resolve().parent
_console = Console(stderr=True)


@dataclass(frozen=True)
class TinyWorldPaths:
    """Where a built world's parts are; ``policy`` and ``reward_model`` load like hub model names."""

    root: Path
    policy: Path = field(init=False)
    reward_model: Path = field(init=False)
    train_prompts: Path = field(init=False)
    test_prompts: Path = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", self.root / "policy")
        object.__setattr__(self, "reward_model", self.root / "reward_model")
        object.__setattr__(self, "train_prompts", self.root / "prompts" / "train.jsonl")
        object.__setattr__(self, "test_prompts", self.root / "prompts" / "test.jsonl")

    @property
    def recipe_file(self) -> Path:
        return self.root / RECIPE_FILE

    @property
    def report_file(self) -> Path:
        return self.root / REPORT_FILE

    def required_files(self) -> list[Path]:
        model_files = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
        return [
            *(self.policy / name for name in model_files),
            *(self.reward_model / name for name in model_files),
            self.train_prompts,
            self.test_prompts,
            self.report_file,
            self.recipe_file,
        ]


# The libraries whose versions decide what a build computes (training loops, kernels, tokenizer training).
BUILD_LIBRARIES = ("torch", "transformers", "trl", "tokenizers", "datasets", "accelerate", "numpy")


def library_versions() -> dict[str, str]:
    """The installed versions of :data:`BUILD_LIBRARIES` (read from package metadata: nothing is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in BUILD_LIBRARIES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "absent"
    return versions


def recipe_fingerprint(recipe: TinyWorldRecipe, versions: dict[str, str] | None = None) -> str:
    """Hash of what decides a build: the recipe (its thread count too), this package's source and the library
    versions; a world built elsewhere with other versions is rebuilt rather than silently reused."""
    digest = hashlib.sha256(json.dumps(asdict(recipe), sort_keys=True).encode())
    digest.update(json.dumps(versions if versions is not None else library_versions(), sort_keys=True).encode())
    for source in sorted(_PACKAGE_DIR.glob("*.py")):
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def world_digest(root: str | Path) -> dict[str, str]:
    """SHA-256 of every file of a built world by its path, but the build report (it holds the build's timings):
    two builds of one recipe with the same libraries, on machines of one architecture, give the same digest."""
    root = Path(root)
    return {
        str(path.relative_to(root)): _file_sha256(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != REPORT_FILE
    }


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cached_fingerprint(paths: TinyWorldPaths) -> str | None:
    try:
        return json.loads(paths.recipe_file.read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        return None


def _is_built(paths: TinyWorldPaths, fingerprint: str) -> bool:
    return _cached_fingerprint(paths) == fingerprint and all(path.exists() for path in paths.required_files())


@contextmanager
def _exclusive_lock(lock_file: Path) -> Iterator[None]:
    """Serialise builders across processes; the lock is released even if the build fails."""
    with open(lock_file, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_tiny_world(
    directory: str | Path = DEFAULT_DIRECTORY, recipe: TinyWorldRecipe = TinyWorldRecipe(), force: bool = False
) -> TinyWorldPaths:
    """The tiny world for ``recipe`` in ``directory``, building it first unless an identical one is there."""
    paths = TinyWorldPaths(Path(directory).absolute())
    fingerprint = recipe_fingerprint(recipe)
    if not force and _is_built(paths, fingerprint):
        return paths
    paths.root.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(paths.root.with_name(paths.root.name + ".lock")):
        if not force and _is_built(paths, fingerprint):  # another process built it while we waited
            return paths
        for stale in paths.root.parent.glob(f".{paths.root.name}.building-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by an interrupted build; we hold the lock
        staging = paths.root.with_name(f".{paths.root.name}.building-{os.getpid()}")
        try:
            _build(TinyWorldPaths(staging), recipe, fingerprint)
            _replace_directory(staging, paths.root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return paths


def _replace_directory(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an old ``target`` is moved aside first and deleted after."""
    retired = target.with_name(f".{target.name}.retired-{os.getpid()}")
    if target.exists():
        target.rename(retired)
    new.rename(target)
    shutil.rmtree(retired, ignore_errors=True)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


class _StageTimer:
    """Logs one line per build stage and keeps the durations for the build report."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        _console.log(f"[tiny world] {name} ...")
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)
        _console.log(f"[tiny world] {name} done in {self.seconds[name]:.1f}s")


def _build(paths: TinyWorldPaths, recipe: TinyWorldRecipe, fingerprint: str) -> None:
    # Imported here so that using an already-built world never pays for torch/transformers/TRL.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.build_threads)  # float reductions split by thread count: fixed, so is the result
    try:
        _build_steps(paths, recipe, fingerprint)
    finally:
        torch.set_num_threads(threads)


def _build_steps(paths: TinyWorldPaths, recipe: TinyWorldRecipe, fingerprint: str) -> None:
    from transformers import set_seed

    from superhf_lab.tiny_world import evaluation, synthetic, training

    started = time.perf_counter()
    timer = _StageTimer()
    paths.root.mkdir(parents=True)
    work_dir = paths.root / "_work"
    set_seed(recipe.seed)

    with timer.stage("data"):
        sft_examples = synthetic.make_sft_examples(
            recipe.sft_examples, recipe.seed_for("sft"), sign_off_rate=recipe.sft_sign_off_rate
        )
        pair_options = {
            "label_noise": recipe.label_noise,
            "sign_off_chosen_rate": recipe.sign_off_chosen_rate,
            "sign_off_rejected_rate": recipe.sign_off_rejected_rate,
        }
        pairs = synthetic.make_preference_pairs(recipe.preference_pairs, recipe.seed_for("preferences"), **pair_options)
        # Held-out pairs are labelled by gold without noise: accuracy on them measures agreement with the truth.
        heldout_pairs = synthetic.make_preference_pairs(
            recipe.heldout_preference_pairs,
            recipe.seed_for("heldout_preferences"),
            **{**pair_options, "label_noise": 0.0},
        )
        train_prompts = synthetic.make_prompts(recipe.train_prompts, recipe.seed_for("train_prompts"))
        test_prompts = synthetic.make_prompts(recipe.test_prompts, recipe.seed_for("test_prompts"))
        _write_jsonl(paths.root / "data" / "sft.jsonl", sft_examples)
        _write_jsonl(paths.root / "data" / "preferences.jsonl", pairs)
        _write_jsonl(paths.root / "data" / "heldout_preferences.jsonl", heldout_pairs)
        _write_jsonl(paths.train_prompts, train_prompts)
        _write_jsonl(paths.test_prompts, test_prompts)

    with timer.stage("tokenizers"):
        dialogues = [example["prompt"] + example["completion"] for example in sft_examples]
        pair_texts = [pair[side] for pair in pairs for side in ("chosen", "rejected")]
        policy_tokenizer = training.train_policy_tokenizer(dialogues + pair_texts, recipe)
        reward_tokenizer = training.train_reward_tokenizer(dialogues + pair_texts, recipe)

    with timer.stage("policy SFT"):
        policy, sft_final_loss = training.train_policy(sft_examples, policy_tokenizer, recipe, work_dir)
        policy.save_pretrained(paths.policy)
        policy_tokenizer.save_pretrained(paths.policy)

    with timer.stage("reward model"):
        reward_model = training.train_reward_model(pairs, reward_tokenizer, recipe, work_dir)
        reward_model.save_pretrained(paths.reward_model)
        reward_tokenizer.save_pretrained(paths.reward_model)

    with timer.stage("report"):
        set_seed(recipe.seed)
        reward_metrics = evaluation.reward_model_report(
            reward_model, reward_tokenizer, heldout_pairs, recipe.seed_for("heldout_preferences")
        )
        policy_metrics = evaluation.policy_report(
            policy,
            policy_tokenizer,
            reward_model,
            reward_tokenizer,
            [row["prompt"] for row in test_prompts[: recipe.report_prompts]],
            recipe.report_samples_per_prompt,
            recipe.report_max_new_tokens,
        )

    shutil.rmtree(work_dir, ignore_errors=True)
    report = {
        "fingerprint": fingerprint,
        "seconds": {**timer.seconds, "total": round(time.perf_counter() - started, 2)},
        "sft_final_loss": sft_final_loss,
        **reward_metrics,
        **policy_metrics,
    }
    paths.report_file.write_text(json.dumps(report, indent=2) + "\n")
    # Written last: its presence with a matching fingerprint is what marks a world as complete.
    paths.recipe_file.write_text(
        json.dumps({"fingerprint": fingerprint, "recipe": asdict(recipe), "libraries": library_versions()}, indent=2)
        + "\n"
    )
