"""Loading policies and reward models through ``from_pretrained``, for hub names and local folders alike."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from superhf_lab.config import ConfigError, ModelConfig, RewardModelConfig

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
    try:
        yield
    except OSError as error:
        raise ConfigError(
            f"{key}={name_or_path!r} could not be loaded ({str(error).splitlines()[0]}). Check the name, "
            "your internet connection or HF_HUB_OFFLINE, or point it at a local folder"
        ) from error


def load_tokenizer(name_or_path: str, revision: str | None, key: str, **kwargs) -> PreTrainedTokenizerBase:
    _check_local_path(name_or_path, key)
    with _loading(name_or_path, key):
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(config: ModelConfig, device: torch.device) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The causal LM and its tokenizer; left padding so batched generation continues each prompt."""
    key = "model.name_or_path"
    tokenizer = load_tokenizer(config.name_or_path, config.revision, key, trust_remote_code=config.trust_remote_code)
    tokenizer.padding_side = "left"
    with _loading(config.name_or_path, key):
        model = AutoModelForCausalLM.from_pretrained(
            config.name_or_path, revision=config.revision, trust_remote_code=config.trust_remote_code,
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
    if model.config.num_labels != 1:
        raise ConfigError(
            f"{key}.name_or_path={config.name_or_path!r} is invalid: its head has {model.config.num_labels} "
            "outputs, a reward model needs a single score (num_labels=1)"
        )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device).eval().requires_grad_(False), tokenizer
