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


def _scripted(policy, tokenizer, script: str):
    """A hook on the policy's head that puts all probability on the next token of ``script``, one token per call of
    the head (the prompt's pass first): a policy that writes a known completion (here one that runs on into a next
    turn) however it is sampled, through the model's forward or the lean sampler's own decoding step."""
    tokens = tokenizer(script, add_special_tokens=False).input_ids
    calls = []

    def write_script(module, inputs, logits):
        position = min(len(calls), len(tokens) - 1)
        calls.append(position)
        logits[:, -1, :] = -1e9
        logits[:, -1, tokens[position]] = 1e9
        return logits

    return policy.get_output_embeddings().register_forward_hook(write_script), calls


@pytest.mark.parametrize("cut", ["next_turn", "reference"])
def test_generation_stops_where_the_completion_is_cut_and_keeps_its_text(tiny_policy, cut):
    policy, tokenizer = tiny_policy
    prompt = "\n\nHuman: How do I bake bread?\n\nAssistant:"
    script = " Mix flour and water.\n\nHuman: thanks, and how long do I knead it for, roughly, in minutes?"
    settings = SamplingSettings(max_new_tokens=40, temperature=1.0, top_p=1.0)
    hook, calls = _scripted(policy, tokenizer, script)
    try:
        (stopped,) = sample_completions(policy, tokenizer, [prompt], 1, settings, 1, CPU, "fp32", cut)
        calls.clear()
        (full,) = sample_completions(policy, tokenizer, [prompt], 1, settings, 1, CPU, "fp32", cut, stop_at_cut=False)
    finally:
        hook.remove()
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
    draws = torch.stack([draw(probabilities, torch.rand(len(probabilities))) for _ in range(40_000)])
    for row in range(2):
        expected = probabilities[row] / probabilities[row].sum()
        frequency = torch.bincount(draws[:, row], minlength=6).double() / len(draws)
        error = (expected.double() * (1 - expected.double()) / len(draws)).sqrt()
        assert ((frequency - expected).abs() <= 5 * error + 1e-12).all(), (row, frequency, expected)
        assert (frequency[expected == 0] == 0).all()


def _sampled_twice(policy, tokenizer, prompts, per_prompt: int, settings: SamplingSettings, batch: int) -> list:
    """Two samplings of the same prompts, each from seed 0."""
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(
            sample_completions(policy, tokenizer, prompts, per_prompt, settings, batch, CPU, "fp32", "next_turn")
        )
    return runs


def test_the_lean_sampler_is_reproducible_and_ends_rows_as_generate_does(tiny_policy, tiny_world):
    policy, tokenizer = tiny_policy
    prompts = [json.loads(line)["prompt"] for line in (tiny_world.root / "prompts" / "test.jsonl").open()][:4]
    runs = _sampled_twice(policy, tokenizer, prompts, 8, SamplingSettings(max_new_tokens=48), 16)
    assert runs[0] == runs[1], "the same seed, the same completions"
    assert any(c.finished for c in runs[0]) and len({c.text for c in runs[0]}) > 16
    assert all(c.generated_tokens <= 48 for c in runs[0])


def _neox(tiny_world, parallel_residual: bool):
    """The tiny policy, or a random-weight GPT-NeoX of its vocabulary with sequential residuals (Pythia's other
    layout) and full rotary dimensions."""
    if parallel_residual:
        return load_policy(ModelConfig(name_or_path=str(tiny_world.policy)), CPU)[0]
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = json.loads((tiny_world.policy / "config.json").read_text())
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=config["vocab_size"],
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            use_parallel_residual=False,
            rotary_pct=1.0,
            attn_implementation="sdpa",
        )
    ).eval()


@pytest.mark.parametrize("parallel_residual", [True, False], ids=["tiny-policy", "sequential-residual"])
@pytest.mark.parametrize("padded", [True, False], ids=["left-padded", "unpadded"])
def test_the_lean_decoding_step_gives_the_models_own_logits_bit_for_bit(
    tiny_world, tiny_policy, parallel_residual, padded
):
    """The GPT-NeoX step (no transformers machinery per token) and the model's forward, each on its own reserved
    cache after the same prompt pass, give equal next-token logits, bit for bit, over 12 steps of random tokens:
    so the lean sampler draws what it drew through the forward, for every seed (the README's tables stand)."""
    from superhf_lab.training.decoding import GPTNeoXStep, decode_step, reserved_cache

    tokenizer = tiny_policy[1]
    policy = _neox(tiny_world, parallel_residual)
    prompts = [json.loads(line)["prompt"] for line in (tiny_world.root / "prompts" / "test.jsonl").open()][:4]
    encoded = tokenizer(prompts if padded else prompts[:1] * 4, return_tensors="pt", padding=True)
    ids, attention_mask = encoded["input_ids"], encoded["attention_mask"]
    assert (attention_mask == 0).any() == padded
    steps, capacity = 12, ids.shape[1] + 12
    fast = decode_step(policy, capacity, sharded_weights=False)
    assert isinstance(fast, GPTNeoXStep)
    model_forward = decode_step(policy, capacity, sharded_weights=True)  # the forward: sharded weights need it
    assert not isinstance(model_forward, GPTNeoXStep)
    tokens = torch.randint(
        0, policy.config.vocab_size, (steps, ids.shape[0]), generator=torch.Generator().manual_seed(0)
    )
    positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
    logits = {}
    with torch.no_grad():
        for name, step in (("fast", fast), ("forward", model_forward)):
            cache = reserved_cache(policy, capacity)
            policy(input_ids=ids, position_ids=positions, attention_mask=attention_mask, past_key_values=cache)
            mask = torch.cat([attention_mask.bool(), torch.ones(ids.shape[0], steps, dtype=torch.bool)], dim=-1)
            logits[name] = [
                step(tokens[i], positions[:, -1] + i + 1, mask[:, : ids.shape[1] + i + 1], cache) for i in range(steps)
            ]
    for fast_logits, forward_logits in zip(logits["fast"], logits["forward"]):
        assert torch.equal(fast_logits, forward_logits)


def test_the_lean_repetition_penalty_is_generates_processor_to_the_bit():
    """On scores of both signs and held tokens with repeats and padding, the in-place penalty equals transformers'
    ``RepetitionPenaltyLogitsProcessor``; prompts holding ids past the head's logits get an error naming the key."""
    from transformers import RepetitionPenaltyLogitsProcessor

    from superhf_lab.training.sampling import RepetitionPenalty

    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(4, 50, generator=generator) * 3
    held = torch.randint(0, 50, (4, 30), generator=generator)
    held[:, :5] = 1  # padding, repeated
    expected = RepetitionPenaltyLogitsProcessor(1.3)(held, scores.clone())
    assert torch.equal(RepetitionPenalty(1.3, 50, held)(held, scores.clone()), expected)
    assert not torch.equal(expected, scores)
    with pytest.raises(ValueError, match="algorithm.sampling.sampler=generate"):
        RepetitionPenalty(1.3, 40, held)


def test_the_lean_sampler_runs_other_architectures_through_their_forward(tiny_policy, tiny_world):
    """A policy that is not GPT-NeoX (a random-weight GPT-2 of the tiny vocabulary) is decoded by its own forward on
    the reserved cache: the same seed gives the same completions, and rows end at EOS or the limit."""
    from superhf_lab.training.decoding import GPTNeoXStep, decode_step

    tokenizer = tiny_policy[1]
    policy = _gpt2(tokenizer)
    assert not isinstance(decode_step(policy, 64, sharded_weights=False), GPTNeoXStep)
    prompts = [json.loads(line)["prompt"] for line in (tiny_world.root / "prompts" / "test.jsonl").open()][:2]
    runs = _sampled_twice(policy, tokenizer, prompts, 3, SamplingSettings(max_new_tokens=12), 6)
    assert runs[0] == runs[1] and len(runs[0]) == 6
    assert all(0 < c.generated_tokens <= 12 for c in runs[0])


def _gpt2(tokenizer):
    """A random-weight GPT-2 of the tiny vocabulary: decoded through its own forward, not the GPT-NeoX step."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, eos_token_id=tokenizer.eos_token_id)
    ).eval()


@pytest.mark.parametrize("architecture", ["gpt-neox-step", "gpt2-forward"])
def test_rows_that_end_leave_the_batch_without_changing_any_draw(tiny_policy, tiny_world, monkeypatch, architecture):
    """The lean sampler drops rows that have ended from its batch (their cache rows too); each row keeps its own
    uniform number of every step, so every completion is the one drawn when all rows stay to the end. A hook on
    the head makes EOS likely, so rows end at many different steps."""
    from superhf_lab.training import sampling

    tokenizer = tiny_policy[1]
    policy = tiny_policy[0] if architecture == "gpt-neox-step" else _gpt2(tokenizer)

    def likely_end(module, inputs, logits):
        logits[..., tokenizer.eos_token_id] += 5.0
        return logits

    prompts = [json.loads(line)["prompt"] for line in (tiny_world.root / "prompts" / "test.jsonl").open()][:4]
    settings = SamplingSettings(max_new_tokens=40, repetition_penalty=1.05, no_repeat_ngram_size=3)
    hook = policy.get_output_embeddings().register_forward_hook(likely_end)
    runs = {}
    try:
        for share in (0.0, 2.0):  # a row leaves as soon as it ends; no row ever leaves
            monkeypatch.setattr(sampling, "LEAVING_SHARE", share)
            torch.manual_seed(0)
            runs[share] = sample_completions(policy, tokenizer, prompts, 8, settings, 32, CPU, "fp32", "next_turn")
    finally:
        hook.remove()
    assert runs[0.0] == runs[2.0]
    ends = sorted({c.generated_tokens for c in runs[0.0] if c.finished})
    assert len(ends) > 5 and ends[-1] < settings.max_new_tokens, f"rows ended at steps {ends}"


def test_the_lean_samplers_flops_can_be_counted(tiny_policy, tiny_world):
    """make bench counts generation's FLOPs with torch's FlopCounterMode, whose module tracker hooks every module
    input that needs gradients: the lean sampler (under inference mode) gives it none, and its matrix products count."""
    from torch.utils.flop_counter import FlopCounterMode

    policy, tokenizer = tiny_policy
    prompts = [json.loads(line)["prompt"] for line in (tiny_world.root / "prompts" / "test.jsonl").open()][:2]
    with FlopCounterMode(display=False) as counter:
        sample_completions(
            policy, tokenizer, prompts, 2, SamplingSettings(max_new_tokens=8), 4, CPU, "fp32", "next_turn"
        )
    assert counter.get_total_flops() > 0
