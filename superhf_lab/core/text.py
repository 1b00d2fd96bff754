"""Conversation text handling shared by every algorithm and the evaluation, so all of them optimise and
are judged on the same text: where a completion ends, and what a reward model reads."""

from __future__ import annotations

import re

HUMAN_TURN = "\n\nHuman:"
ASSISTANT_TURN = "\n\nAssistant:"

# Where a completion is cut (``text.cut`` and ``eval.cut``):
CUT_PATTERNS = {
    # A turn the policy starts itself: "\n\nHuman:", "\nAssistant:", "\n\nH:", "\nUser:" ..., and a "Human:" or
    # "Assistant:" inside a line, which would otherwise let a completion script the human's reply to the reward model.
    "next_turn": re.compile(r"\n\s*(?:Human|Assistant|User|H|A)\s*:|\b(?:Human|Assistant)\s*:"),
    # The reference trainer's PROMPT_DELIMITER_REGEX_MEDIUM: any "\n\n<label>:", and any "Human" or "Assistant".
    "reference": re.compile(r"\n\n[^:]+:|Human|Assistant"),
}
# A character every match of the pattern ends with, so generation need only look for a cut after a token holding
# it; None: any token may complete a match ("Human" ends with any of its letters' tokens).
CUT_LAST_CHARACTERS = {"next_turn": ":", "reference": None}
REWARD_INPUT_FIELDS = ("{prompt}", "{completion}")
_REWARD_INPUT_FIELD = re.compile(r"\{(prompt|completion)\}")


def trim_completion(completion: str, cut: str = "next_turn") -> tuple[str, bool]:
    """Cut a completion where ``CUT_PATTERNS[cut]`` first matches; returns (text, whether it was cut)."""
    match = CUT_PATTERNS[cut].search(completion)
    if match is None:
        return completion.rstrip(), False
    return completion[: match.start()].rstrip(), True


def with_conversation_prompt(conversation_prompt: str, prompt: str) -> str:
    """What the policy is conditioned on: an optional preamble dialogue, then the prompt."""
    return conversation_prompt + prompt


def reward_model_input(template: str, prompt: str, completion: str) -> str:
    """The text a reward model scores: ``template`` with ``{prompt}`` and the stripped ``{completion}`` filled in.

    One pass, so a prompt that happens to contain "{completion}" is never substituted twice.
    """
    values = {"prompt": prompt, "completion": completion.strip()}
    return _REWARD_INPUT_FIELD.sub(lambda match: values[match.group(1)], template)


def decode_completion(tokenizer, token_ids: list[int], cut: str = "next_turn") -> tuple[str, int, bool]:
    """Generated token ids to completion text, the same way for every algorithm.

    Stops at the first EOS (or padding, which follows a sequence that stopped), decodes without special tokens
    and cuts where ``cut`` says a new turn starts. Returns the text, the number of tokens generated before EOS
    or padding, and whether the completion ended (EOS or a next turn) rather than running into the token limit.
    """
    ending = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    ends = [index for index, token in enumerate(token_ids) if token in ending]
    ended = bool(ends)
    kept = token_ids[: ends[0]] if ended else token_ids
    text, was_cut = trim_completion(tokenizer.decode(kept, skip_special_tokens=True), cut)
    return text, len(kept), ended or was_cut
