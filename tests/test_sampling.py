"""Sampling stops a sequence where its completion is cut, and that never changes the completions."""

import json

import pytest
import torch
from tolerances import fp32_tolerance

from superhf_lab.config.schema import ModelConfig, SamplingSettings
from superhf_lab.training.models import load_policy
from superhf_lab.training.sampling import sample_completions

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_policy(tiny_world):
    return load_policy(ModelConfig(name_or_path=str(tiny_world.policy)), CPU)


def _scripted(policy, tokenizer, script: str, prompt_length: int):
    """The policy's forward with all probability on the next token of ``script``: a policy that writes a known
    completion (here one that runs on into a next turn) however it is sampled."""
    tokens = tokenizer(script, add_special_tokens=False).input_ids
    forward = policy.forward

    def scripted_forward(*args, **inputs):
        output = forward(*args, **inputs)
        position = min(inputs["attention_mask"].shape[1] - prompt_length, len(tokens) - 1)
        output.logits[:, -1, :] = -1e9
        output.logits[:, -1, tokens[position]] = 1e9
        return output

    return scripted_forward


@pytest.mark.parametrize("cut", ["next_turn", "reference"])
def test_generation_stops_where_the_completion_is_cut_and_keeps_its_text(tiny_policy, cut):
    policy, tokenizer = tiny_policy
    prompt = "\n\nHuman: How do I bake bread?\n\nAssistant:"
    script = " Mix flour and water.\n\nHuman: thanks, and how long do I knead it for, roughly, in minutes?"
    settings = SamplingSettings(max_new_tokens=40, temperature=1.0, top_p=1.0)
    policy.forward = _scripted(policy, tokenizer, script, len(tokenizer(prompt).input_ids))
    try:
        (stopped,) = sample_completions(policy, tokenizer, [prompt], 1, settings, 1, CPU, "fp32", cut)
        (full,) = sample_completions(policy, tokenizer, [prompt], 1, settings, 1, CPU, "fp32", cut, stop_at_cut=False)
    finally:
        del policy.forward
    assert stopped.text == full.text == " Mix flour and water." and stopped.finished and full.finished
    assert stopped.num_tokens == full.num_tokens == len(tokenizer(" Mix flour and water.").input_ids)
    turn_end = len(tokenizer(" Mix flour and water.\n\nHuman:", add_special_tokens=False).input_ids)
    if cut == "next_turn":
        assert stopped.generated_tokens == turn_end, "generation ends with the token that completes the next turn"
    assert stopped.generated_tokens <= turn_end, "the reference pattern already cuts at the word Human"
    assert full.generated_tokens == settings.max_new_tokens > stopped.generated_tokens, "without stopping: to the limit"


def test_stopping_at_the_cut_never_changes_the_sampled_completions(tiny_policy, tiny_world):
    policy, tokenizer = tiny_policy
    prompts = [json.loads(line)["prompt"] for line in (tiny_world.root / "prompts" / "test.jsonl").open()][:4]
    sampled = {}
    for stop in (True, False):
        torch.manual_seed(0)
        sampled[stop] = sample_completions(
            policy,
            tokenizer,
            prompts,
            8,
            SamplingSettings(max_new_tokens=48),
            16,
            CPU,
            "fp32",
            "next_turn",
            stop_at_cut=stop,
        )
    assert [(c.text, c.finished, c.num_tokens) for c in sampled[True]] == [
        (c.text, c.finished, c.num_tokens) for c in sampled[False]
    ]
    assert all(a.generated_tokens <= b.generated_tokens for a, b in zip(sampled[True], sampled[False]))


def test_scoring_in_length_sorted_minibatches_gives_each_text_its_own_score(tiny_world):
    from superhf_lab.config.schema import RewardModelConfig
    from superhf_lab.training.rewards import ModelRewardScorer

    prompts = ["\n\nHuman: How do I bake bread?\n\nAssistant:", "\n\nHuman: Hi\n\nAssistant:"] * 3
    completions = [
        " Mix flour, water and yeast, knead the dough and let it rise for an hour.",
        " Hello!",
        " Yes.",
        " I can't help with that.",
        " " + "Bread needs time. " * 8,
        "",
    ]
    scorer = ModelRewardScorer(
        RewardModelConfig(name_or_path=str(tiny_world.reward_model)), "reward_model", CPU, "fp32", batch_size=1
    )
    alone = scorer.score(prompts, completions, "{prompt} {completion}")
    scorer.batch_size = 4
    bucketed = scorer.score(prompts, completions, "{prompt} {completion}")
    # Batching only pads and reorders each score's float32 sums: per layer a layer norm's and a projection's over the
    # hidden size, the attention's over the positions and the MLP's; then the embeddings' layer norm, the pooler and
    # the head (hidden each). The fp32 bound at the scores' size: 3e-4 here (measured 2e-7); another text's score
    # or attended padding is off by far more than that.
    config = json.loads((tiny_world.reward_model / "config.json").read_text())
    length = (
        config["num_hidden_layers"]
        * (2 * config["hidden_size"] + config["intermediate_size"] + config["max_position_embeddings"])
        + 3 * config["hidden_size"]
    )
    assert bucketed == pytest.approx(alone, abs=fp32_tolerance(length, max(map(abs, alone))))
    assert len(set(round(score, 3) for score in alone)) > 3, "the texts get different scores"


SETTINGS = [
    SamplingSettings(top_p=0.9),
    SamplingSettings(temperature=0.8, top_p=0.95, generation_top_k=50),
    SamplingSettings(generation_top_k=20),
    SamplingSettings(temperature=1.3, top_p=0.5),
    SamplingSettings(top_p=1.0),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=["top-p", "all-warpers", "top-k", "hot-top-p", "plain"])
def test_the_lean_sampler_draws_from_generates_distribution(tiny_policy, tiny_world, settings):
    """Per step, the distribution the lean loop draws from (its candidates and their probabilities) is the one
    generate's warpers leave, token for token, on the tiny policy's next-token logits and on flat random ones (where
    top-p reaches past the ranked candidates and the whole vocabulary is ranked). Not the same draws for a seed: it
    draws among fewer candidates than generate's softmax over the vocabulary."""
    from superhf_lab.training.sampling import truncated_distribution, warpers

    policy, tokenizer = tiny_policy
    prompts = [json.loads(line)["prompt"] for line in (tiny_world.root / "prompts" / "test.jsonl").open()][:8]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        policy_logits = policy(**encoded).logits[:, -1].float()
    flat = torch.randn(8, policy_logits.shape[-1], generator=torch.Generator().manual_seed(0)) * 0.05
    for scores in (policy_logits, flat):
        expected = torch.softmax(warpers(settings)(encoded["input_ids"], scores.clone()), dim=-1)
        candidates, probabilities = truncated_distribution(scores.clone(), settings)
        actual = torch.zeros_like(expected).scatter(1, candidates, probabilities)
        # a softmax over V terms and a renormalisation: float32 rounding of sums of that length, on probabilities <= 1
        torch.testing.assert_close(actual, expected, rtol=0, atol=fp32_tolerance(2 * scores.shape[-1]))
        assert ((actual > 0) == (expected > 0)).all(), "the same tokens are kept"


def test_the_lean_samplers_draw_follows_the_probabilities_and_never_picks_a_dropped_token():
    """Inverse-CDF draws, one uniform per row: each index's frequency over 40,000 draws is its probability within
    5 standard errors, a probability-0 index (top-p's or top-k's dropped tokens, here first, inside and last) is
    never drawn, and an unnormalised row draws as its normalised self."""
    from superhf_lab.training.sampling import draw

    probabilities = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0], [1.0, 2.0, 0.0, 0.0, 1.0, 0.0]])
    torch.manual_seed(0)
    draws = torch.stack([draw(probabilities) for _ in range(40_000)])
    for row in range(2):
        expected = probabilities[row] / probabilities[row].sum()
        frequency = torch.bincount(draws[:, row], minlength=6).double() / len(draws)
        error = (expected.double() * (1 - expected.double()) / len(draws)).sqrt()
        assert ((frequency - expected).abs() <= 5 * error + 1e-12).all(), (row, frequency, expected)
        assert (frequency[expected == 0] == 0).all()


def test_the_lean_sampler_is_reproducible_and_ends_rows_as_generate_does(tiny_policy, tiny_world):
    policy, tokenizer = tiny_policy
    prompts = [json.loads(line)["prompt"] for line in (tiny_world.root / "prompts" / "test.jsonl").open()][:4]
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(
            sample_completions(
                policy, tokenizer, prompts, 8, SamplingSettings(max_new_tokens=48), 16, CPU, "fp32", "next_turn"
            )
        )
    assert runs[0] == runs[1], "the same seed, the same completions"
    assert any(c.finished for c in runs[0]) and len({c.text for c in runs[0]}) > 16
    assert all(c.generated_tokens <= 48 for c in runs[0])
