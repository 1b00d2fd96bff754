"""Conversation text handling shared by every algorithm, so all of them optimise the same reward."""

from __future__ import annotations

import re

HUMAN_TURN = "\n\nHuman:"
ASSISTANT_TURN = "\n\nAssistant:"

# Where a policy starts writing the next turn itself: "\n\nHuman:", "\nAssistant:", "\n\nH:", "\nUser:"...
_NEXT_TURN = re.compile(r"\n\s*(?:Human|Assistant|User|H|A)\s*:")


def trim_completion(completion: str) -> tuple[str, bool]:
    """Cut a completion where the model starts another turn; returns (text, whether it was cut)."""
    match = _NEXT_TURN.search(completion)
    if match is None:
        return completion.rstrip(), False
    return completion[: match.start()].rstrip(), True


def with_conversation_prompt(conversation_prompt: str, prompt: str) -> str:
    """What the policy is conditioned on: an optional preamble dialogue, then the prompt."""
    return conversation_prompt + prompt


def decode_completion(tokenizer, token_ids: list[int]) -> tuple[str, int, bool]:
    """Generated token ids to completion text, the same way for every algorithm.

    Stops at the first EOS, decodes without special tokens and cuts at the next turn. Returns the text,
    the number of tokens before EOS, and whether the completion ended (EOS or a next turn) rather than
    running into the token limit.
    """
    eos = tokenizer.eos_token_id
    ended = eos in token_ids
    kept = token_ids[: token_ids.index(eos)] if ended else token_ids
    text, cut = trim_completion(tokenizer.decode(kept, skip_special_tokens=True))
    return text, len(kept), ended or cut
