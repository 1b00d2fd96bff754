"""Sampling completions from a policy, shared by SuperHF's superbatches, evaluation and best-of-N."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteria, StoppingCriteriaList

from superhf_lab.config.schema import SamplingSettings
from superhf_lab.core.faults import reach
from superhf_lab.core.text import CUT_LAST_CHARACTERS, CUT_PATTERNS, decode_completion, with_conversation_prompt
from superhf_lab.runtime.distributed import ONE_PROCESS, Processes
from superhf_lab.training.completions import Completion
from superhf_lab.training.models import autocast


class StopAtNextTurn(StoppingCriteria):
    """Ends each sequence as soon as its text would be cut (a next turn, by ``text.cut``), so no tokens are
    generated past where the completion ends anyway. The text kept is the same: the first match of the cut
    pattern is already complete when it is found, and later tokens could only add matches after it. A row is
    decoded only after a token that can complete a match (one holding ``CUT_LAST_CHARACTERS[cut]``)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_length: int, cut: str) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.pattern = CUT_PATTERNS[cut]
        self.completing = completing_tokens(tokenizer, CUT_LAST_CHARACTERS[cut])
        self.stopped: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        if self.stopped is None:
            self.stopped = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        for row in (~self.stopped).nonzero().flatten().tolist():
            if self.completing is not None and input_ids[row, -1].item() not in self.completing:
                continue
            text = self.tokenizer.decode(input_ids[row, self.prompt_length :], skip_special_tokens=True)
            self.stopped[row] = self.pattern.search(text) is not None
        return self.stopped.to(input_ids.device)


_COMPLETING_TOKENS: dict[tuple[int, str], frozenset[int]] = {}


def completing_tokens(tokenizer: PreTrainedTokenizerBase, character: str | None) -> frozenset[int] | None:
    """Ids of the tokens whose text holds ``character`` (None for any token), once per tokenizer."""
    if character is None:
        return None
    key = (id(tokenizer), character)
    if key not in _COMPLETING_TOKENS:
        vocabulary = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        _COMPLETING_TOKENS[key] = frozenset(i for i, token in enumerate(vocabulary) if token and character in token)
    return _COMPLETING_TOKENS[key]


@torch.no_grad()
def sample_completions(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    per_prompt: int,
    settings: SamplingSettings,
    batch_size: int,
    device: torch.device,
    precision: str,
    cut: str,
    progress: str | None = None,
    stop_at_cut: bool = True,
    processes: Processes = ONE_PROCESS,
) -> list[Completion]:
    """``per_prompt`` completions of each prompt (prompt-major order), cut where ``cut`` says a new turn starts
    (``text.cut``, see :data:`superhf_lab.core.text.CUT_PATTERNS`); generation of a sequence stops there too unless
    ``stop_at_cut`` is off (the benchmark's "before").

    ``progress`` names a progress bar over the minibatches (long evaluations), shown by the main process; None
    shows none. Each of several ``processes`` samples only its share of the completions (``processes.gather``
    joins them).
    """
    reach("generation")
    jobs = [(index, prompt) for index, prompt in enumerate(prompts) for _ in range(per_prompt)]
    jobs, real = processes.even_share(jobs)
    was_training = policy.training
    policy.eval()
    completions = []
    for start in tqdm(
        range(0, len(jobs), batch_size),
        desc=progress,
        unit="minibatch",
        disable=progress is None or not processes.is_main,
        leave=False,
    ):
        batch = jobs[start : start + batch_size]
        encoded = tokenizer(
            [with_conversation_prompt(settings.conversation_prompt, prompt) for _, prompt in batch],
            return_tensors="pt",
            padding=True,
        ).to(device)
        prompt_length = encoded["input_ids"].shape[1]
        stopping = StoppingCriteriaList([StopAtNextTurn(tokenizer, prompt_length, cut)] if stop_at_cut else [])
        with autocast(device, precision):
            output = policy.generate(
                **encoded,
                do_sample=True,
                temperature=settings.temperature,
                top_p=settings.top_p,
                top_k=settings.generation_top_k,
                repetition_penalty=settings.repetition_penalty,
                no_repeat_ngram_size=settings.no_repeat_ngram_size,
                max_new_tokens=settings.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                stopping_criteria=stopping,
            )
        new_tokens = output[:, prompt_length:].tolist()
        for (prompt_index, prompt), tokens in zip(batch, new_tokens):
            completions.append(decoded_completion(tokenizer, prompt, prompt_index, tokens, cut))
    policy.train(was_training)
    return completions[:real]


def decoded_completion(
    tokenizer: PreTrainedTokenizerBase, prompt: str, prompt_index: int, tokens: list[int], cut: str
) -> Completion:
    """A generated row as a :class:`Completion`: its text cut at EOS or the next turn, the text's own length in
    policy tokens, and how many tokens were generated for it (up to EOS or where generation stopped)."""
    text, generated, finished = decode_completion(tokenizer, tokens, cut)
    return Completion(
        prompt,
        prompt_index,
        text,
        num_tokens=completion_length(tokenizer, text),
        finished=finished,
        generated_tokens=generated,
    )


def completion_length(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    """The completion's length in policy tokens, as fine-tuning tokenizes it (without EOS)."""
    return len(tokenizer(text, add_special_tokens=False).input_ids)
