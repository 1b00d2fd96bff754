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
