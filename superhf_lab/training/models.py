"""Loading policies and reward models through ``from_pretrained``, for hub names and local folders alike."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch
from huggingface_hub import HfApi, try_to_load_from_cache
from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from superhf_lab.config.schema import ModelConfig, RewardModelConfig, RunConfig
from superhf_lab.core.errors import ConfigError

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, precision: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one, or fp16 on CPU, is a config error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} is invalid: no CUDA device is visible; use device=auto or device=cpu")
    if precision == "fp16" and not name.startswith("cuda"):
        raise ConfigError("precision='fp16' is invalid on the CPU: use precision=bf16 or precision=fp32")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision as accelerate does it: fp32 weights, bf16/fp16 matmuls inside the context."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])


def _check_local_path(name_or_path: str, key: str) -> None:
    """A path-like name that does not exist would otherwise surface as a confusing hub lookup error."""
    looks_local = name_or_path.startswith((".", "/", "~")) or Path(name_or_path).exists()
    if looks_local and not Path(name_or_path).expanduser().exists():
        raise ConfigError(
            f"{key}={name_or_path!r} is invalid: no such folder. Point it at a folder written by "
            "save_pretrained, or at a hub name such as EleutherAI/pythia-70m"
        )


@contextlib.contextmanager
def _loading(name_or_path: str, key: str) -> Iterator[None]:
    """transformers reports a folder or hub repo that holds no usable model as OSError or ValueError."""
    try:
        yield
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"{key}={name_or_path!r} could not be loaded ({str(error).strip().splitlines()[0]}). Check the name, "
            "your internet connection or HF_HUB_OFFLINE, or point it at a folder written by save_pretrained"
        ) from error


def check_model_sources(config: RunConfig) -> None:
    """Every configured model can be had, and reward models score with one number: seconds, before any run opens.

    Local folders must hold ``config.json``; hub names must be in the local Hugging Face cache or answer on
    the Hub. Only configs are read here, never weights.
    """
    check_model_source(config.model.name_or_path, config.model.revision, "model")
    for key, reward_model in (
        ("reward_model", config.reward_model),
        ("heldout_reward_model", config.heldout_reward_model),
    ):
        if reward_model is not None and reward_model.kind == "hf":
            check_model_source(reward_model.name_or_path, reward_model.revision, key)
            with _loading(reward_model.name_or_path, f"{key}.name_or_path"):
                model_config = AutoConfig.from_pretrained(reward_model.name_or_path, revision=reward_model.revision)
            _require_single_score(model_config.num_labels, reward_model.name_or_path, key)


def check_model_source(name_or_path: str, revision: str | None, section: str) -> None:
    """A folder that is not there or holds no model, or a hub name that cannot be fetched, names its key."""
    key = f"{section}.name_or_path"
    _check_local_path(name_or_path, key)
    folder = Path(name_or_path).expanduser()
    if folder.exists():
        if not (folder / "config.json").is_file():
            raise ConfigError(
                f"{key}={name_or_path!r} is invalid: the folder holds no config.json. Point it at a folder written by "
                "save_pretrained (config.json, tokenizer files and weights)"
            )
        return
    try:
        cached = try_to_load_from_cache(name_or_path, "config.json", revision=revision)
    except HFValidationError:
        raise ConfigError(
            f"{key}={name_or_path!r} is invalid: no such folder, and not a hub name (org/name). Point it at a folder "
            "written by save_pretrained, or at a hub name such as EleutherAI/pythia-70m"
        ) from None
    if isinstance(cached, str):
        return  # downloaded before; transformers will find it
    if hf_constants.is_offline_mode():
        raise ConfigError(
            f"{key}={name_or_path!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. Download it "
            "once with network access (unset HF_HUB_OFFLINE), or point the key at a local folder"
        )
    try:
        HfApi().model_info(name_or_path, revision=revision, timeout=10)
    except RevisionNotFoundError:
        raise ConfigError(
            f"{section}.revision={revision!r} is invalid: {name_or_path} has no such branch, tag or "
            "commit on the Hugging Face Hub; use null for the default branch"
        ) from None
    except RepositoryNotFoundError as error:  # gated and private repositories too
        raise ConfigError(
            f"{key}={name_or_path!r} is invalid: the Hugging Face Hub has no such model, or it is private or gated "
            f"({type(error).__name__}). Check the spelling, log in (hf auth login) for a private model, or point "
            "the key at a local folder"
        ) from None
    except Exception as error:  # the hub's HTTP client raises its own connection and timeout types
        raise ConfigError(
            f"{key}={name_or_path!r} cannot be fetched: it is not in the local Hugging Face cache and the Hub is "
            f"unreachable ({type(error).__name__}). Connect to the internet, or point the key at a local folder "
            "written by save_pretrained"
        ) from None


def _require_single_score(num_labels: int, name_or_path: str, key: str) -> None:
    if num_labels != 1:
        raise ConfigError(
            f"{key}.name_or_path={name_or_path!r} is invalid: its head has {num_labels} outputs, a reward model "
            "needs a single score (num_labels=1). Use a reward model trained with one output (e.g. TRL's "
            "RewardTrainer), or set the key to a hub reward model such as "
            "OpenAssistant/reward-model-deberta-v3-large-v2"
        )


def load_tokenizer(name_or_path: str, revision: str | None, key: str, **kwargs) -> PreTrainedTokenizerBase:
    _check_local_path(name_or_path, key)
    with _loading(name_or_path, key):
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(
    config: ModelConfig, device: torch.device, key: str = "model.name_or_path"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The causal LM and its tokenizer; left padding so batched generation continues each prompt."""
    tokenizer = load_tokenizer(config.name_or_path, config.revision, key, trust_remote_code=config.trust_remote_code)
    tokenizer.padding_side = "left"
    with _loading(config.name_or_path, key):
        model = AutoModelForCausalLM.from_pretrained(
            config.name_or_path,
            revision=config.revision,
            trust_remote_code=config.trust_remote_code,
            dtype=torch.float32,
        )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


def load_reward_model(
    config: RewardModelConfig, key: str, device: torch.device
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A sequence classifier whose single logit is the reward."""
    tokenizer = load_tokenizer(config.name_or_path, config.revision, f"{key}.name_or_path")
    with _loading(config.name_or_path, f"{key}.name_or_path"):
        model = AutoModelForSequenceClassification.from_pretrained(config.name_or_path, revision=config.revision)
    _require_single_score(model.config.num_labels, config.name_or_path, key)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval().requires_grad_(False), tokenizer


def context_length(model_config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase) -> tuple[int, str] | None:
    """How many tokens the policy can attend to, and where that limit comes from (None: no stated limit)."""
    limits = []
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            limits.append((value, f"{name} in its config.json"))
            break
    if 0 < tokenizer.model_max_length < 1_000_000_000:  # transformers' "no limit" is a huge sentinel
        limits.append((tokenizer.model_max_length, "its tokenizer's model_max_length"))
    return min(limits) if limits else None


def check_context_fits(
    tokenizer: PreTrainedTokenizerBase,
    model_config: PretrainedConfig,
    prompts: list[str],
    max_new_tokens: int,
    max_prompt_chars: int,
    conversation_prompt: str = "",
) -> None:
    """Every training prompt (after ``conversation_prompt``) plus ``max_new_tokens`` must fit the policy's context.

    Otherwise generation or fine-tuning would fail (or silently read past the trained positions) somewhere in
    the run, whenever the long prompt comes up; this fails before the first superbatch instead.
    """
    limit = context_length(model_config, tokenizer)
    if limit is None or not prompts:
        return
    context, source = limit
    encoded = tokenizer([conversation_prompt + prompt for prompt in prompts], verbose=False)
    lengths = [len(ids) for ids in encoded.input_ids]
    too_long = [index for index, length in enumerate(lengths) if length + max_new_tokens > context]
    if not too_long:
        return
    longest = max(lengths)
    fixes = []
    if context - longest >= 1:
        fixes.append(f"lower algorithm.max_new_tokens to {context - longest} or less")
    chars = min(min(len(prompts[index]) for index in too_long), max_prompt_chars) - 1  # drops every misfit
    if any(len(prompt) <= chars for prompt in prompts):
        fixes.append(
            f"lower data.max_prompt_chars (now {max_prompt_chars}) to {chars} to drop the "
            f"{len(too_long)} of {len(prompts)} training prompts that do not fit"
        )
    fixes = fixes or [f"lower both algorithm.max_new_tokens and data.max_prompt_chars (now {max_prompt_chars})"]
    name = getattr(model_config, "name_or_path", "") or "the policy"
    raise ConfigError(
        f"algorithm.max_new_tokens={max_new_tokens} does not fit the policy's context: the longest training prompt is "
        f"{longest} tokens, and {longest} + {max_new_tokens} is more than the {context} tokens {name} can attend to "
        f"({source}); " + ", or ".join(fixes)
    )
