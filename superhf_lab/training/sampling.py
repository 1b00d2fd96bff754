"""Sampling completions from a policy, shared by SuperHF's superbatches, evaluation and best-of-N."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import (
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from superhf_lab.config.schema import SamplingSettings
from superhf_lab.core.faults import reach
from superhf_lab.core.text import CUT_LAST_CHARACTERS, CUT_PATTERNS, decode_completion, with_conversation_prompt
from superhf_lab.runtime.distributed import ONE_PROCESS, Processes
from superhf_lab.runtime.memory import alone
from superhf_lab.training.completions import Completion
from superhf_lab.training.decoding import decode_step, forward_logits, reserved_cache
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
        last = input_ids[:, -1].tolist()
        for row in (~self.stopped).nonzero().flatten().tolist():
            if self.completing is not None and last[row] not in self.completing:
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
        stop = StopAtNextTurn(tokenizer, prompt_length, cut) if stop_at_cut else None
        with autocast(device, precision):
            output = SAMPLERS[settings.sampler](policy, encoded, settings, tokenizer, stop, processes)
        new_tokens = output[:, prompt_length:].tolist()
        for (prompt_index, prompt), tokens in zip(batch, new_tokens):
            completions.append(decoded_completion(tokenizer, prompt, prompt_index, tokens, cut))
    policy.train(was_training)
    return completions[:real]


# Widths of the best-ranked tokens the lean sampler tries, per row, before ranking the whole vocabulary: a row whose
# top-p set fits in the first is done with it. On the tiny policy at top-p 0.9 a row keeps 8 tokens at the median,
# 97 at the 90th percentile and 619 at most; torch's topk over 4,096 costs 0.23 ms for 64, 0.66 ms for 256, 0.82 ms
# for 512 and 3.5 ms for a full sort (32 rows, this machine).
CANDIDATE_WIDTHS = (64, 256)
# Ended rows leave the lean sampler's batch once they are this share of it (each time copies the cache's rows).
LEAVING_SHARE = 0.25


class RepetitionPenalty:
    """``generate``'s repetition penalty (``RepetitionPenaltyLogitsProcessor``: each held token's score divided by
    the penalty, or multiplied when negative; padding counts as held), computed on the held tokens alone and written
    into the scores in place, where the processor pads, scatters into and slices copies of the whole vocabulary's
    scores every step (on the tiny policy, most of what the step spends outside the model). The same floats."""

    def __init__(self, penalty: float, vocabulary: int, input_ids: torch.Tensor) -> None:
        if int(input_ids.max()) >= vocabulary:
            raise ValueError(
                f"the prompts hold token ids up to {int(input_ids.max())}, past the policy head's {vocabulary} "
                "logits, which the lean sampler's repetition penalty does not skip: set "
                "algorithm.sampling.sampler=generate"
            )
        self.penalty = penalty

    def __call__(self, held: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        values = scores.gather(1, held)
        return scores.scatter_(1, held, torch.where(values < 0, values * self.penalty, values / self.penalty))


def warpers(settings: SamplingSettings) -> LogitsProcessorList:
    """The warpers ``generate`` applies after the penalties: temperature, then top-k, then top-p."""
    processors = LogitsProcessorList()
    if settings.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(settings.temperature))
    if settings.generation_top_k != 0:
        processors.append(TopKLogitsWarper(settings.generation_top_k))
    if settings.top_p < 1.0:
        processors.append(TopPLogitsWarper(settings.top_p))
    return processors


def truncated_distribution(scores: torch.Tensor, settings: SamplingSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The distribution ``generate``'s warpers leave (temperature, top-k, then top-p on what top-k kept), as each
    row's candidate tokens (``(B, C)`` ids, highest first, padded with probability-0 entries) and their probabilities,
    without sorting the vocabulary: with top-k only the ``generation_top_k`` best are ranked; with top-p alone each
    row ranks the :data:`CANDIDATE_WIDTHS` best in turn, and the whole vocabulary only if its top-p set reaches past
    them. Returns every token (in id order) when nothing truncates.

    A token is kept, as in ``TopPLogitsWarper``, unless the tokens at most as likely as it hold at most 1 - top_p of
    the mass, i.e. when the tokens ranked above it hold less than top_p; the first is always kept."""
    if settings.temperature != 1.0:
        scores = scores / settings.temperature
    rows, vocabulary = scores.shape
    if settings.top_p >= 1.0 and settings.generation_top_k == 0:
        return torch.arange(vocabulary, device=scores.device).expand_as(scores), F.softmax(scores, dim=-1)
    if settings.generation_top_k:
        widths = (min(settings.generation_top_k, vocabulary),)
        ranked = scores  # top-p acts on top-k's renormalised mass
    else:
        widths = (*(width for width in CANDIDATE_WIDTHS if width < vocabulary), vocabulary)
        ranked = F.softmax(scores, dim=-1)  # ranks as the scores do; one fused pass, cheaper than a logsumexp
    pieces = []  # (rows, their candidates, their kept probabilities)
    pending = torch.arange(rows, device=scores.device)
    for width in widths:
        top, top_ids = (ranked if len(pending) == rows else ranked[pending]).topk(width, dim=-1)
        probabilities = F.softmax(top, dim=-1) if settings.generation_top_k else top
        if settings.top_p >= 1.0:  # top-k alone
            kept = torch.ones_like(probabilities, dtype=torch.bool)
        else:
            kept = probabilities.cumsum(-1) - probabilities < settings.top_p  # the mass ranked above each candidate
            kept[:, 0] = True
        if width == widths[-1] or not kept[:, -1].any():  # every row left ends here
            pieces.append((pending, top_ids, probabilities * kept))
            break
        done = (~kept[:, -1]).nonzero().squeeze(1)
        pieces.append((pending[done], top_ids[done], probabilities[done] * kept[done]))
        pending = pending[kept[:, -1].nonzero().squeeze(1)]
    if len(pieces) == 1:
        _, candidates, kept_probabilities = pieces[0]
        return candidates, kept_probabilities / kept_probabilities.sum(-1, keepdim=True)
    width = max(ids.shape[1] for _, ids, _ in pieces)
    candidates = torch.zeros(rows, width, dtype=torch.long, device=scores.device)
    kept_probabilities = torch.zeros(rows, width, dtype=scores.dtype, device=scores.device)
    for done_rows, ids, probabilities in pieces:
        candidates[done_rows, : ids.shape[1]] = ids
        kept_probabilities[done_rows, : ids.shape[1]] = probabilities
    return candidates, kept_probabilities / kept_probabilities.sum(-1, keepdim=True)


def draw(probabilities: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One index per row, with these (``(B, C)``, not necessarily normalised) probabilities: by the inverse of each
    row's cumulative distribution at its number of ``uniform`` (``(B,)``, from [0, 1)). ``torch.multinomial`` draws
    an exponential per candidate (its argmax of p / E), which costs a tiny policy's step more than its forward pass;
    this takes one number per row. A zero-probability index is an empty interval and never drawn."""
    cumulative = probabilities.cumsum(-1)
    point = uniform[:, None] * cumulative[:, -1:]
    return torch.searchsorted(cumulative, point, right=True).clamp_(max=cumulative.shape[-1] - 1).squeeze(1)


def generate_sampling(
    policy, encoded, settings: SamplingSettings, tokenizer, stop: StopAtNextTurn | None, processes=ONE_PROCESS
):
    """Prompts and sampled tokens through transformers' ``generate`` (which syncs sharded ranks itself)."""
    return policy.generate(
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
        stopping_criteria=StoppingCriteriaList([stop] if stop is not None else []),
    )


def lean_sampling(
    policy,
    encoded,
    settings: SamplingSettings,
    tokenizer,
    stop: StopAtNextTurn | None,
    processes: Processes = ONE_PROCESS,
):
    """Prompts and sampled tokens from the distribution :func:`generate_sampling` samples, by a loop over cached
    forward passes without ``generate``'s per-step machinery.

    The prompt runs through the model's forward; each later step runs :func:`decoding.decode_step` on the last
    token (the same logits), into a cache and token buffer reserved for the whole generation. The last position's
    float32 logits get ``generate``'s penalties (:class:`RepetitionPenalty`, its no-repeat n-gram processor), one
    token per row is drawn from :func:`truncated_distribution` (the warpers' result, from the best-ranked
    candidates rather than a sort of the vocabulary), rows that have ended (EOS, or the cut when ``stop`` is given)
    get padding, and the loop stops when every row has (on every rank, under sharded weights). The distribution is
    ``generate``'s; the draws are not its draws for a seed, as they come from fewer candidates.

    Rows that have ended leave the batch (:data:`LEAVING_SHARE` of it at a time), so the model and the sampling run
    on the rows still generating, where ``generate`` carries every row to the longest one's end; each row keeps its
    own uniform number of every step, so a row draws what it would have drawn in the whole batch. Under sharded
    weights every rank keeps its rows, as the ranks' forward passes are collectives over the same steps.
    """
    # Inference mode drops autograd's bookkeeping from every operation (about a sixth of a tiny policy's step);
    # nothing made here outlives the call but token ids. Not under sharded weights, whose gathered parameters do.
    with torch.inference_mode(not processes.sharded_weights):
        input_ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
        rows, prompt_length = input_ids.shape
        capacity = prompt_length + settings.max_new_tokens
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        # Sharded weights: a forward pass is a collective, so every rank steps until all ranks' rows have ended.
        any_unfinished = processes.any if processes.sharded_weights else alone
        sequences = input_ids.new_full((rows, capacity), pad)
        sequences[:, :prompt_length] = input_ids
        mask = torch.ones(rows, capacity, dtype=torch.bool, device=input_ids.device)
        mask[:, :prompt_length] = attention_mask.bool()
        cache = reserved_cache(policy, capacity)
        step = decode_step(policy, capacity, processes.sharded_weights)
        positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
        logits = forward_logits(policy, input_ids, positions, attention_mask, cache)
        positions = positions[:, -1]
        unfinished = torch.ones(rows, dtype=torch.bool, device=input_ids.device)
        repetition = (
            RepetitionPenalty(settings.repetition_penalty, logits.shape[-1], input_ids)
            if settings.repetition_penalty != 1.0
            else None
        )
        no_repeat = (
            NoRepeatNGramLogitsProcessor(settings.no_repeat_ngram_size) if settings.no_repeat_ngram_size else None
        )
        length = prompt_length
        # the rows still in the batch (the rows of the logits, positions, mask and cache)
        live = torch.arange(rows, device=input_ids.device)
        for _ in range(settings.max_new_tokens):
            # the penalties write into the scores, so they get a copy
            scores = logits.to(dtype=torch.float32, copy=repetition is not None or no_repeat is not None)
            if repetition is not None or no_repeat is not None:
                held = sequences[live, :length] if len(live) < rows else sequences[:, :length]
                if repetition is not None:
                    scores = repetition(held, scores)
                if no_repeat is not None:
                    scores = no_repeat(held, scores)
            candidates, probabilities = truncated_distribution(scores, settings)
            uniform = torch.rand(rows, device=input_ids.device)[live]  # every row's number, in the batch or not
            tokens = candidates.gather(1, draw(probabilities, uniform)[:, None]).squeeze(1)
            tokens = torch.where(unfinished[live], tokens, torch.full_like(tokens, pad))
            sequences[live, length] = tokens
            length += 1
            unfinished[live] &= tokens != eos
            if stop is not None:
                unfinished &= ~stop(sequences[:, :length], scores)
            if not any_unfinished(bool(unfinished.any())) or length == capacity:
                break
            positions = positions + 1
            staying = unfinished[live]
            if not processes.sharded_weights and (~staying).sum() >= max(1, LEAVING_SHARE * len(live)):
                kept = staying.nonzero().squeeze(1)
                live, tokens, positions, mask = live[kept], tokens[kept], positions[kept], mask[kept]
                cache.batch_select_indices(kept)
            logits = step(tokens, positions, mask[:, :length], cache)
        return sequences[:, :length]


SAMPLERS = {"lean": lean_sampling, "generate": generate_sampling}


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
