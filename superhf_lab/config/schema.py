"""Typed schema of a run's configuration.

Hydra composes YAML from ``conf/``; :func:`validate_config` merges it onto these dataclasses so a typo,
a wrong type or an impossible value stops the run before any model loads, with the key's full name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from superhf_lab.core.errors import require
from superhf_lab.core.text import CUT_PATTERNS, REWARD_INPUT_FIELDS
from superhf_lab.runtime.distributed import ENGINES

DEVICES_HELP = "use 'auto', 'cpu', 'cuda' or 'cuda:N'"
PRECISIONS = ("fp32", "bf16", "fp16")
MODES = ("train", "eval")
RESUME_MODES = ("auto", "never")


@dataclass
class ModelConfig:
    """The policy: a hub name or a local folder written by ``save_pretrained``."""

    name_or_path: str = field(
        default="???", metadata={"help": "hub name (org/name) or local folder written by save_pretrained; required"}
    )
    revision: Optional[str] = field(
        default=None, metadata={"help": "hub branch, tag or commit; null: the default branch"}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "run the model repository's own Python code (transformers' trust_remote_code)"}
    )

    def check(self, prefix: str) -> None:
        require(
            bool(self.name_or_path.strip()),
            f"{prefix}.name_or_path",
            self.name_or_path,
            "name a hub model (org/name) or a local folder",
        )


@dataclass
class RewardModelConfig:
    """A scorer of (prompt, completion) text.

    ``kind: hf`` is a sequence-classification model with a single-score head, run through its own
    tokenizer; ``kind: gold`` is the tiny world's programmatic gold reward (no weights).
    """

    kind: str = field(
        default="hf",
        metadata={
            "help": "hf: a sequence classifier with a single-score head, on its own tokenizer; "
            "gold: the tiny world's programmatic gold reward (no weights)"
        },
    )
    name_or_path: Optional[str] = field(
        default=None, metadata={"help": "hub name or local folder of the hf reward model; unused by gold"}
    )
    revision: Optional[str] = field(
        default=None, metadata={"help": "hub branch, tag or commit; null: the default branch"}
    )
    max_length: int = field(default=512, metadata={"help": "tokens of reward-model input; longer inputs are truncated"})

    def check(self, prefix: str) -> None:
        require(self.kind in ("hf", "gold"), f"{prefix}.kind", self.kind, "use 'hf' or 'gold'")
        if self.kind == "hf":
            require(
                bool(self.name_or_path),
                f"{prefix}.name_or_path",
                self.name_or_path,
                "name a hub reward model or a local folder",
            )
        require(self.max_length > 0, f"{prefix}.max_length", self.max_length, "use a positive token count")


# The row formats, and how each becomes a prompt (or a preference pair): superhf_lab/training/data.py.
SOURCE_KINDS = ("hh_rlhf", "hh_red_team", "webgpt", "self_instruct", "prompts")
PAIR_KINDS = ("hh_rlhf", "webgpt")  # the row formats that carry a human preference


@dataclass
class DataSourceConfig:
    """One prompt source: a local file when ``path`` is set, else a Hugging Face Hub dataset, in the hub's row format.

    ``kind``: ``hh_rlhf`` (rows of ``chosen``/``rejected`` conversations), ``hh_red_team`` (a ``transcript``),
    ``webgpt`` (``question.full_text``), ``self_instruct`` (a ``prompt`` up to "Output:") or ``prompts`` (a
    ready ``prompt``). A source with ``has_test_split``
    has its own test split (the hub's ``test``, locally ``test_path``); otherwise its last ``test_size`` rows
    are the test set and the rest is for training. ``weight`` or ``count`` sets its share of the training mix.
    ``where`` keeps the rows whose fields equal the given values (``{family: harmful}``), after the split.
    """

    kind: str = field(
        default="???",
        metadata={
            "help": "row format: hh_rlhf (chosen/rejected conversations), hh_red_team (a transcript), webgpt "
            "(question.full_text), self_instruct (a prompt up to 'Output:') or prompts (a ready prompt); required"
        },
    )
    hub_name: Optional[str] = field(default=None, metadata={"help": "Hugging Face Hub dataset, read when path is null"})
    hub_data_dir: Optional[str] = field(
        default=None, metadata={"help": "the hub dataset's data_dir (a subfolder such as harmless-base)"}
    )
    hub_revision: Optional[str] = field(
        default=None,
        metadata={"help": "hub branch, tag or commit (e.g. refs/convert/parquet); null: the default branch"},
    )
    path: Optional[str] = field(
        default=None,
        metadata={"help": "local .jsonl or .jsonl.gz train file in the hub's row format; wins over the hub"},
    )
    test_path: Optional[str] = field(default=None, metadata={"help": "local test file (with has_test_split and path)"})
    has_test_split: bool = field(
        default=False,
        metadata={
            "help": "the source has its own test split (the hub's test, locally test_path); "
            "false: its last test_size rows are the test set"
        },
    )
    test_size: int = field(
        default=2300, metadata={"help": "rows held out from the end as the test set when has_test_split is false"}
    )
    weight: Optional[float] = field(
        default=None,
        metadata={"help": "share of the training mix, relative to the other sources' weights; 0 leaves the source out"},
    )
    count: Optional[int] = field(
        default=None,
        metadata={"help": "prompts taken from the source (the first N); null: all of them; 0 leaves it out"},
    )
    where: dict[str, str] = field(
        default_factory=dict,
        metadata={"help": "keep only rows whose fields have these values (e.g. {family: harmful}), after the split"},
    )

    def check(self, prefix: str) -> None:
        require(self.kind in SOURCE_KINDS, f"{prefix}.kind", self.kind, f"use one of {SOURCE_KINDS}")
        require(
            bool(self.path or self.hub_name),
            f"{prefix}.path",
            self.path,
            f"give a local .jsonl or .jsonl.gz file, or a Hugging Face Hub dataset in {prefix}.hub_name",
        )
        require(
            self.test_path is None or bool(self.path),
            f"{prefix}.test_path",
            self.test_path,
            f"set {prefix}.path too: a source is read either from local files or from the hub",
        )
        require(
            self.test_path is None or self.has_test_split,
            f"{prefix}.test_path",
            self.test_path,
            f"set {prefix}.has_test_split=true to use it, or remove it to hold out the last test_size rows of "
            f"{prefix}.path",
        )
        require(self.test_size >= 0, f"{prefix}.test_size", self.test_size, "use 0 or more rows")
        require(
            self.weight is None or self.count is None,
            f"{prefix}.count",
            self.count,
            f"give either {prefix}.weight or {prefix}.count, not both",
        )
        require(
            self.weight is None or (math.isfinite(self.weight) and self.weight >= 0),
            f"{prefix}.weight",
            self.weight,
            "use a finite weight >= 0 (0 leaves the source out)",
        )
        require(
            self.count is None or self.count >= 0,
            f"{prefix}.count",
            self.count,
            "use 0 or more prompts (0 leaves the source out, null takes all)",
        )


@dataclass
class DataConfig:
    """The prompt mix: named sources, each with a weight (all of them) or an optional count.

    ``total_prompts`` sizes a weighted mix (null: the largest mix the weights allow); prompts over
    ``max_prompt_chars`` characters are dropped, as in the paper; ``shuffle`` mixes with the run's seed.
    Malformed rows (a parser finds no prompt in them) are skipped and counted; a source with more than
    ``max_malformed_fraction`` of the rows read malformed stops the run instead.
    """

    name: str = field(default="custom", metadata={"help": "the mix's name"})
    sources: dict[str, DataSourceConfig] = field(
        default_factory=dict, metadata={"help": "the prompt sources by name, each as the <name>.* keys below"}
    )
    total_prompts: Optional[int] = field(
        default=None, metadata={"help": "prompts in a weighted mix; null: the largest mix the weights allow"}
    )
    max_prompt_chars: int = field(
        default=1024, metadata={"help": "prompts longer than this many characters are dropped, as in the paper"}
    )
    shuffle: bool = field(default=True, metadata={"help": "shuffle the mix with the run's seed"})
    max_malformed_fraction: float = field(
        default=0.01,
        metadata={"help": "share of a source's rows that may be malformed (skipped and counted) before the run stops"},
    )

    def check(self, prefix: str) -> None:
        require(bool(self.sources), f"{prefix}.sources", {}, "name at least one prompt source (see conf/data/)")
        for name, source in self.sources.items():
            source.check(f"{prefix}.sources.{name}")
        weighted = [name for name, source in self.sources.items() if source.weight is not None]
        for name, source in self.sources.items() if weighted else ():
            require(
                source.weight is not None,
                f"{prefix}.sources.{name}.weight",
                source.weight,
                f"give every source a weight, as {prefix}.sources.{weighted[0]} has, or none (then counts)",
            )
        require(
            any(source.count != 0 and source.weight != 0 for source in self.sources.values()),
            f"{prefix}.sources",
            sorted(self.sources),
            "give at least one source a positive weight or count",
        )
        require(
            self.total_prompts is None or bool(weighted),
            f"{prefix}.total_prompts",
            self.total_prompts,
            "it sizes a weighted mix: give the sources weights, or set it to null",
        )
        require(
            self.total_prompts is None or self.total_prompts > 0,
            f"{prefix}.total_prompts",
            self.total_prompts,
            "use a positive prompt count, or null for the largest mix the weights allow",
        )
        require(
            self.max_prompt_chars > 0,
            f"{prefix}.max_prompt_chars",
            self.max_prompt_chars,
            "use a positive character count",
        )
        require(
            0 <= self.max_malformed_fraction <= 1,
            f"{prefix}.max_malformed_fraction",
            self.max_malformed_fraction,
            "use a share from 0 (stop at the first malformed row) to 1 (skip any number)",
        )

    def local_paths(self) -> list[str]:
        """Every local file the sources name, so the caller can build them first (the tiny world's prompts)."""
        return [path for source in self.sources.values() for path in (source.path, source.test_path) if path]


@dataclass
class TinyWorldConfig:
    """Cache folder of the embedded tiny world, built on demand when a path points into it."""

    dir: str = field(
        default=".cache/tiny_world",
        metadata={"help": "cache folder, built on first use and rebuilt when its recipe or generator code changes"},
    )


@dataclass
class MlflowConfig:
    """Tracking settings. ``tracking_uri: null`` defers to MLFLOW_TRACKING_URI, else local sqlite.

    ``retry_every_s``: how often a run retries a server that stopped answering; meanwhile its metrics
    wait in a local spool file (see superhf_lab/tracking/tracker.py).
    """

    tracking_uri: Optional[str] = field(
        default=None,
        metadata={"help": "MLflow server or store; null: MLFLOW_TRACKING_URI if set, else sqlite:///mlflow.db here"},
    )
    experiment_name: str = field(default="superhf_lab", metadata={"help": "the MLflow experiment the run is logged in"})
    run_name: Optional[str] = field(
        default=None,
        metadata={
            "help": "the MLflow run's name; null: the algorithm's (e.g. superhf kl_coef=0.35 seed=0), in a sweep the "
            "swept values"
        },
    )
    completions_logged_per_superbatch: int = field(
        default=4, metadata={"help": "sampled completions per step logged to the completions table"}
    )
    retry_every_s: float = field(
        default=30.0,
        metadata={
            "help": "seconds between retries of a server that stopped answering; metrics wait in a local spool file"
        },
    )

    def check(self, prefix: str) -> None:
        require(
            bool(self.experiment_name.strip()),
            f"{prefix}.experiment_name",
            self.experiment_name,
            "give the experiment a name",
        )
        require(
            self.completions_logged_per_superbatch >= 0,
            f"{prefix}.completions_logged_per_superbatch",
            self.completions_logged_per_superbatch,
            "use 0 or more",
        )
        require(self.retry_every_s >= 0, f"{prefix}.retry_every_s", self.retry_every_s, "use 0 or more seconds")


@dataclass
class ObjectiveConfig:
    """What run.py returns to a sweeper: each metric's mean over the run's last ``last_n`` steps.

    One metric gives a float (a single-objective study); several give a tuple, one value per Optuna
    direction (a multi-objective study). ``penalties`` subtracts ``weight x mean(metric)`` from the first
    objective, for example reward penalised by METEOR similarity (mode collapse).
    """

    metrics: list[str] = field(
        default_factory=lambda: ["reward/mean"],
        metadata={
            "help": "metrics whose tail means run.py returns; several: a multi-objective study (one direction each)"
        },
    )
    penalties: dict[str, float] = field(
        default_factory=dict,
        metadata={
            "help": "metric: weight, weight x mean(metric) subtracted from the first objective (e.g. METEOR similarity)"
        },
    )
    last_n: int = field(default=1, metadata={"help": "last steps of the run each metric is averaged over"})

    def check(self, prefix: str) -> None:
        require(bool(self.metrics), f"{prefix}.metrics", self.metrics, "name at least one metric, e.g. [reward/mean]")
        require(self.last_n >= 1, f"{prefix}.last_n", self.last_n, "average over at least 1 step")

    def check_logged(
        self, logged: tuple[str, ...], algorithm: str, has_heldout: bool, prefix: str = "objective"
    ) -> None:
        """Every named metric must be one the algorithm logs (held-out ones need a held-out reward model)."""
        named = [(f"{prefix}.metrics", name) for name in self.metrics]
        named += [(f"{prefix}.penalties", name) for name in self.penalties]
        for key, name in named:
            require(name in logged, key, name, f"{algorithm} logs {sorted(logged)}")
            require(
                has_heldout or not name.startswith("heldout_"),
                key,
                name,
                "heldout_reward_model is null, so no held-out reward is logged; configure one or pick reward/*",
            )

    def value(self, history: dict[str, list[float]]) -> float | tuple[float, ...]:
        """The objective from a run's metric history; NaN where a metric has no finite value."""
        values = [self._tail_mean(history, name) for name in self.metrics]
        values[0] -= sum(weight * self._tail_mean(history, name) for name, weight in self.penalties.items())
        return values[0] if len(values) == 1 else tuple(values)

    def _tail_mean(self, history: dict[str, list[float]], name: str) -> float:
        finite = [value for value in history.get(name, []) if math.isfinite(value)][-self.last_n :]
        return sum(finite) / len(finite) if finite else math.nan


def check_reward_input(template: str, key: str) -> None:
    for field_name in REWARD_INPUT_FIELDS:
        require(
            template.count(field_name) == 1,
            key,
            template,
            f"write {' and '.join(REWARD_INPUT_FIELDS)} exactly once each, e.g. '{{prompt}} {{completion}}'",
        )


def check_cut(cut: str, key: str) -> None:
    require(cut in CUT_PATTERNS, key, cut, f"use one of {tuple(CUT_PATTERNS)}")


@dataclass
class TextConfig:
    """How sampled text becomes a completion and what reward models read, the same for every algorithm.

    ``cut``: where a completion ends (``next_turn``, or the reference trainer's pattern ``reference``; see
    superhf_lab/core/text.py). ``reward_input``: the text every reward model scores, with ``{prompt}`` and the
    stripped ``{completion}`` filled in (the reference prepends its conversation prompt).
    """

    cut: str = field(
        default="next_turn",
        metadata={
            "help": "where a completion ends: next_turn (where the policy starts a new turn, also an inline 'Human:') "
            "or reference (the reference trainer's pattern)"
        },
    )
    reward_input: str = field(
        default="{prompt} {completion}",
        metadata={"help": "the text every reward model scores, {prompt} and the stripped {completion} filled in"},
    )

    def check(self, prefix: str) -> None:
        check_cut(self.cut, f"{prefix}.cut")
        check_reward_input(self.reward_input, f"{prefix}.reward_input")


def check_training_limits(config, prefix: str) -> None:
    """The keys the lab's own trainers share: ``max_grad_norm``, ``max_nonfinite_losses`` and ``max_oom_halvings``."""
    require(
        config.max_grad_norm is None or config.max_grad_norm > 0,
        f"{prefix}.max_grad_norm",
        config.max_grad_norm,
        "use null (no clipping) or a value > 0",
    )
    require(
        config.max_nonfinite_losses >= 0,
        f"{prefix}.max_nonfinite_losses",
        config.max_nonfinite_losses,
        "use 0 or more",
    )
    require(
        config.max_oom_halvings >= 0, f"{prefix}.max_oom_halvings", config.max_oom_halvings, "use 0 (never) or more"
    )


@dataclass
class LoraSettings:
    """LoRA adapters (peft) on the policy; the KL reference is then the model with adapters disabled."""

    enabled: bool = field(
        default=False,
        metadata={
            "help": "train LoRA adapters (peft), not the whole policy; the KL reference is the policy without them"
        },
    )
    r: int = field(default=4, metadata={"help": "the adapters' rank"})
    alpha: int = field(default=32, metadata={"help": "the adapters' scaling (peft's lora_alpha)"})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the adapters' input, in [0, 1)"})
    target_modules: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "modules that get adapters (e.g. [q_proj, v_proj]); null: peft's default for the architecture"
        },
    )

    def check(self, prefix: str) -> None:
        if self.enabled:
            require(self.r > 0, f"{prefix}.r", self.r, "use a positive rank")
            require(0 <= self.dropout < 1, f"{prefix}.dropout", self.dropout, "use a value in [0, 1)")

    def to_peft(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            task_type="CAUSAL_LM",
            target_modules=list(self.target_modules) if self.target_modules else None,
        )


SAMPLERS = ("lean", "generate")


@dataclass
class SamplingSettings:
    """How completions are sampled: ``generate`` keyword arguments plus the policy-only conversation prompt."""

    max_new_tokens: int = field(default=64, metadata={"help": "most tokens generated per completion"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature, > 0"})
    top_p: float = field(
        default=0.9,
        metadata={"help": "nucleus sampling: the smallest set of tokens with this probability mass, in (0, 1]"},
    )
    generation_top_k: int = field(default=0, metadata={"help": "transformers' top-k sampling filter; 0 disables it"})
    repetition_penalty: float = field(default=1.0, metadata={"help": "generate's repetition penalty; 1.0 is none"})
    no_repeat_ngram_size: int = field(
        default=0, metadata={"help": "n-grams of this size occur at most once in a completion; 0 disables it"}
    )
    conversation_prompt: str = field(
        default="", metadata={"help": "prepended to every prompt the policy sees, never shown to a reward model"}
    )
    sampler: str = field(
        default="lean",
        metadata={
            "help": "lean: the lab's loop over cached forward passes; generate: transformers' generate() (the same "
            "distribution, other draws for a seed; slower)"
        },
    )

    @property
    def sampling(self) -> SamplingSettings:
        """The sampling settings alone (of an algorithm's config that extends them), as generation takes them."""
        return SamplingSettings(**{f.name: getattr(self, f.name) for f in fields(SamplingSettings)})

    def check(self, prefix: str) -> None:
        require(self.sampler in SAMPLERS, f"{prefix}.sampler", self.sampler, f"use one of {SAMPLERS}")
        require(self.max_new_tokens > 0, f"{prefix}.max_new_tokens", self.max_new_tokens, "use a positive integer")
        require(self.temperature > 0, f"{prefix}.temperature", self.temperature, "sampling needs a temperature > 0")
        require(0 < self.top_p <= 1, f"{prefix}.top_p", self.top_p, "use a value in (0, 1]")
        require(self.generation_top_k >= 0, f"{prefix}.generation_top_k", self.generation_top_k, "use 0 (off) or more")
        require(
            self.repetition_penalty > 0,
            f"{prefix}.repetition_penalty",
            self.repetition_penalty,
            "use a value > 0 (1.0 is no penalty)",
        )
        require(
            self.no_repeat_ngram_size >= 0,
            f"{prefix}.no_repeat_ngram_size",
            self.no_repeat_ngram_size,
            "use 0 (off) or more",
        )


@dataclass
class EvalConfig:
    """Held-out evaluation on the data mix's test prompts: one sampled completion per prompt.

    ``mode=eval`` evaluates ``policy`` (a hub name, a local folder, or an MLflow artifact URI such as
    ``runs:/<run_id>/policy``; null: the starting policy ``model``). Training runs evaluate their final
    policy (``at_end``) and every ``every_n_steps`` training steps (superbatches, updates or optimizer steps), the
    same fixed prompts each time, so a run traces a path in KL and reward.
    """

    policy: Optional[str] = field(
        default=None,
        metadata={
            "help": "mode=eval: hub name, local folder or MLflow artifact URI (runs:/<run_id>/policy); "
            "null: the starting policy model"
        },
    )
    prompts_per_source: Optional[int] = field(
        default=64, metadata={"help": "a seeded sample of each source's test prompts; null: all of them"}
    )
    meteor_pairs_per_source: int = field(
        default=128,
        metadata={"help": "pairs of completions to different prompts whose METEOR similarity is measured, per source"},
    )
    seed: int = field(
        default=0,
        metadata={"help": "seed of the test-prompt sample and METEOR pairs: the same for every run, whatever its seed"},
    )
    at_end: bool = field(default=True, metadata={"help": "training runs evaluate their final policy"})
    every_n_steps: int = field(
        default=0, metadata={"help": "every algorithm that trains also evaluates every N steps; 0: off"}
    )
    batch_size: int = field(
        default=32, metadata={"help": "prompts per sampling batch and completions per scoring batch"}
    )
    cut: str = field(default="next_turn", metadata={"help": "as text.cut, for the evaluation's completions"})
    reward_input: str = field(
        default="{prompt} {completion}", metadata={"help": "as text.reward_input, for the evaluation's scoring"}
    )
    sampling: SamplingSettings = field(
        default_factory=SamplingSettings,
        metadata={"help": "how the one completion per prompt is sampled (best_of_n samples its N with these too)"},
    )

    def check(self, prefix: str) -> None:
        check_cut(self.cut, f"{prefix}.cut")
        check_reward_input(self.reward_input, f"{prefix}.reward_input")
        require(
            self.prompts_per_source is None or self.prompts_per_source >= 2,
            f"{prefix}.prompts_per_source",
            self.prompts_per_source,
            "use 2 or more (METEOR compares pairs), or null for every test prompt",
        )
        require(
            self.meteor_pairs_per_source >= 2,
            f"{prefix}.meteor_pairs_per_source",
            self.meteor_pairs_per_source,
            "use 2 or more pairs",
        )
        require(
            self.every_n_steps >= 0,
            f"{prefix}.every_n_steps",
            self.every_n_steps,
            "use 0 (off) or more",
        )
        require(self.batch_size > 0, f"{prefix}.batch_size", self.batch_size, "use a positive integer")
        self.sampling.check(f"{prefix}.sampling")


@dataclass
class CheckpointConfig:
    """Checkpoints for continuing a killed run exactly (superhf_lab/runtime/checkpoint.py).

    ``resume: auto`` continues the newest unfinished checkpoint of the same configuration (re-run the same
    command); ``never`` starts over (its checkpoints replace the old ones).
    """

    dir: str = field(
        default="checkpoints",
        metadata={
            "help": "checkpoints go to <dir>/<hash of the config>/, where re-running the same command finds them"
        },
    )
    every_n_steps: int = field(
        default=10,
        metadata={"help": "training steps between checkpoints, also at the end and on SIGTERM; 0: only then"},
    )
    resume: str = field(
        default="auto",
        metadata={"help": "auto: continue the newest unfinished checkpoint of the same config; never: start over"},
    )

    def check(self, prefix: str) -> None:
        require(
            self.every_n_steps >= 0,
            f"{prefix}.every_n_steps",
            self.every_n_steps,
            "use 0 (only at the end and on SIGTERM) or more",
        )
        require(self.resume in RESUME_MODES, f"{prefix}.resume", self.resume, f"use one of {RESUME_MODES}")


@dataclass
class DistributedConfig:
    """Which engine the launched processes use; how many there are is the launcher's choice (torchrun,
    ``accelerate launch``, SLURM tasks). ``auto``: one process runs alone, several use what accelerate set up."""

    engine: str = field(
        default="auto",
        metadata={"help": "auto (one process alone, several what accelerate set up), single, ddp, fsdp or deepspeed"},
    )

    def check(self, prefix: str) -> None:
        require(self.engine in ENGINES, f"{prefix}.engine", self.engine, f"use one of {ENGINES}")


@dataclass
class RunConfig:
    """The whole run. ``algorithm`` is typed by the plugin that ``algorithm.name`` selects."""

    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the policy (config group model)"})
    reward_model: RewardModelConfig = field(
        default_factory=RewardModelConfig,
        metadata={"help": "the reward model the algorithms optimise (config group reward_model)"},
    )
    heldout_reward_model: Optional[RewardModelConfig] = field(
        default=None,
        metadata={
            "help": "a reward model only measured, logged as heldout_reward/*, in reward_model's keys; null: none"
        },
    )
    algorithm: Any = field(
        default=None,
        metadata={"help": "the algorithm=<name> option's settings, typed by its plugin's dataclass (see its table)"},
    )
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "the prompt mix (config group data)"})
    preferences: DataConfig = field(
        default_factory=DataConfig,
        metadata={"help": "preference pairs for DPO and FeedME, in data's keys (kinds hh_rlhf and webgpt)"},
    )
    tiny_world: TinyWorldConfig = field(default_factory=TinyWorldConfig, metadata={"help": "the embedded tiny world"})
    text: TextConfig = field(
        default_factory=TextConfig,
        metadata={"help": "how sampled text becomes a completion and what reward models read, for every algorithm"},
    )
    mlflow: MlflowConfig = field(default_factory=MlflowConfig, metadata={"help": "tracking"})
    objective: ObjectiveConfig = field(
        default_factory=ObjectiveConfig,
        metadata={"help": "what run.py returns to a sweeper: each metric's mean over the run's last last_n steps"},
    )
    eval: EvalConfig = field(
        default_factory=EvalConfig, metadata={"help": "held-out evaluation on the test prompts (config group eval)"}
    )
    checkpoint: CheckpointConfig = field(
        default_factory=CheckpointConfig, metadata={"help": "checkpoints for continuing a killed run exactly"}
    )
    distributed: DistributedConfig = field(
        default_factory=DistributedConfig,
        metadata={"help": "the engine of a multi-process launch (config group distributed)"},
    )
    mode: str = field(
        default="train",
        metadata={
            "help": "train, or eval: evaluate eval.policy with the evaluate plugin, no training (the algorithm's "
            "settings stay as configured)"
        },
    )
    kl_coef: float = field(
        default=0.35,
        metadata={
            "help": "weight of the KL(policy || starting policy) term, for every algorithm; 0 turns the penalty off, "
            "the KL is still logged"
        },
    )
    seed: int = field(default=0, metadata={"help": "the run's seed (each process samples with seed + its rank)"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present), cpu, cuda or cuda:N"})
    precision: str = field(default="fp32", metadata={"help": "fp32, bf16 or fp16 (fp16 needs CUDA)"})
    output_dir: str = field(
        default="outputs", metadata={"help": "the run's folder; config.yaml sets it to Hydra's output folder"}
    )

    def check(self) -> None:
        for section in (
            self.model,
            self.reward_model,
            self.data,
            self.preferences,
            self.text,
            self.mlflow,
            self.objective,
            self.eval,
            self.checkpoint,
            self.distributed,
        ):
            section.check(_field_name(self, section))
        for name, source in self.preferences.sources.items():
            require(
                source.kind in PAIR_KINDS,
                f"preferences.sources.{name}.kind",
                source.kind,
                f"use one of {PAIR_KINDS}: the row formats that hold a chosen and a rejected response",
            )
        if self.heldout_reward_model is not None:
            self.heldout_reward_model.check("heldout_reward_model")
        require(
            math.isfinite(self.kl_coef) and self.kl_coef >= 0,
            "kl_coef",
            self.kl_coef,
            "use a finite value >= 0 (0 turns the penalty off but still logs the KL)",
        )
        require(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            "device",
            self.device,
            DEVICES_HELP,
        )
        require(self.precision in PRECISIONS, "precision", self.precision, f"use one of {PRECISIONS}")
        require(self.mode in MODES, "mode", self.mode, f"use one of {MODES}")
        self.algorithm.check()


def _field_name(parent: Any, child: Any) -> str:
    return next(f.name for f in fields(parent) if getattr(parent, f.name) is child)
