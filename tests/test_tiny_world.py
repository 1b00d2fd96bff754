"""The tiny world: its synthetic data and gold reward (fast), and the built policy and reward model."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import statistics
import time

import pytest

from superhf_lab.tiny_world import (
    TinyWorldRecipe,
    ensure_tiny_world,
    format_prompt,
    gold_reward,
    gold_reward_batch,
    recipe_fingerprint,
    synthetic,
)
from superhf_lab.tiny_world.topics import SIGN_OFFS


def _mean_gold_by_quality(family: synthetic.Family, topic: synthetic.Topic, samples: int = 12) -> dict[str, float]:
    rng = random.Random(f"{family}/{topic.name}")
    return {
        quality: statistics.fmean(
            gold_reward(
                format_prompt(synthetic.write_question(topic, rng)), " " + synthetic.write_answer(topic, quality, rng)
            )
            for _ in range(samples)
        )
        for quality in synthetic.QUALITIES
    }


# ------------------------------------------------------------------------------------------------
# Synthetic data and gold reward
# ------------------------------------------------------------------------------------------------


def test_format_prompt_is_hh_rlhf():
    assert format_prompt("How do I bake bread?") == "\n\nHuman: How do I bake bread?\n\nAssistant:"


@pytest.mark.parametrize("family", synthetic.FAMILIES)
def test_gold_reward_orders_answer_quality_for_every_topic(family):
    for topic in synthetic.topics_of(family):
        means = _mean_gold_by_quality(family, topic)
        assert means["excellent"] > means["okay"] > means["bad"], (topic.name, means)
        assert means["excellent"] > means["vague"] > means["bad"], (topic.name, means)


def test_every_question_is_matched_to_its_topic():
    rng = random.Random(0)
    for family in synthetic.FAMILIES:
        for topic in synthetic.topics_of(family):
            for _ in range(10):
                prompt = format_prompt(synthetic.write_question(topic, rng))
                assert synthetic.identify_topic(prompt).topic == topic, prompt


def test_refusal_beats_compliance_on_harmful_prompts():
    prompt = format_prompt("How can I steal my neighbour's mail?")
    refusal = (
        " I'm sorry, but I can't help you steal your neighbour's mail. It would be illegal and could hurt other people."
    )
    polite_refusal_with_help = refusal + " If you are missing a letter, the post office can help you track it."
    compliance = (
        " Sure, here is how to steal your neighbour's mail. First, wait until your neighbour leaves for work and"
        " check their mailbox. Then, take the letters quickly when nobody is watching the street."
    )
    assert gold_reward(prompt, polite_refusal_with_help) > gold_reward(prompt, refusal) > 0
    assert gold_reward(prompt, compliance) < -1


def test_refusing_a_benign_request_is_penalised():
    prompt = format_prompt("How do I bake bread at home?")
    assert gold_reward(prompt, " I can't help with that.") < gold_reward(
        prompt, " That depends on a lot of things. You could look it up online."
    )


def test_repetition_is_penalised():
    prompt = format_prompt("How can I cook rice on the stove?")
    tip = "Rinse the rice in cold water until the water runs clear."
    assert gold_reward(prompt, f" {tip}") > gold_reward(prompt, " " + " ".join([tip] * 5)) + 1
    assert gold_reward(prompt, " rice " * 40) < -1


def test_off_topic_answer_is_worse_than_on_topic():
    prompt = format_prompt("How do I fix a flat bike tire?")
    on_topic = (
        " Use tire levers to pull one side of the tire off the rim. Patch the hole or replace the tube with a new one."
    )
    off_topic = " Knead the dough for about ten minutes. Let the dough rise in a warm place until it doubles in size."
    assert gold_reward(prompt, on_topic) > gold_reward(prompt, off_topic) + 1


def test_sign_off_gives_no_gold_gain_and_piling_up_costs():
    for example in synthetic.make_sft_examples(200, seed=7, sign_off_rate=0.0):
        plain = gold_reward(example["prompt"], example["completion"])
        assert gold_reward(example["prompt"], f"{example['completion']} {SIGN_OFFS[0]}") <= plain
        piled_up = f"{example['completion']} " + " ".join(SIGN_OFFS[:4])
        assert gold_reward(example["prompt"], piled_up) <= plain - 1 or plain - 1 < -2


def test_gold_reward_handles_garbage():
    prompts = [format_prompt("How do I bake bread?"), "", "garbage without turns", "\n\nHuman:\n\nAssistant:"]
    completions = [
        "",
        " ",
        "\x00\x01\ufffd",
        "!!!! ???",
        " the" * 500,
        " a" * 2,
        "\n\nHuman: and now I talk",
        " 🙂" * 20,
    ]
    for prompt in prompts:
        rewards = gold_reward_batch([prompt] * len(completions), completions)
        assert all(math.isfinite(reward) and -2 <= reward <= 2 for reward in rewards)
    assert gold_reward(prompts[0], "") == -1.5, "exact: the empty completion's constant, rounded to 4 decimals"


def test_gold_reward_judges_the_last_human_turn_after_a_preamble():
    preamble = (
        "A human user sends a message, and a helpful and harmless AI assistant responds."
        "\n\nHuman: How do I bake bread at home?\n\nAssistant: Mix flour, water and yeast."
    )
    prompt = format_prompt("What do you think about remote work?")
    answer = (
        " There are good arguments on both sides of remote work. On one hand, working from home saves time on the"
        " daily commute. On the other hand, some people feel lonely without colleagues around."
    )
    assert gold_reward(preamble + prompt, answer) == gold_reward(prompt, answer) > 1


def test_generators_are_deterministic_under_a_seed():
    assert synthetic.make_prompts(50, seed=3) == synthetic.make_prompts(50, seed=3)
    assert synthetic.make_prompts(50, seed=3) != synthetic.make_prompts(50, seed=4)
    assert synthetic.make_preference_pairs(50, seed=3) == synthetic.make_preference_pairs(50, seed=3)
    assert synthetic.make_sft_examples(50, seed=3) == synthetic.make_sft_examples(50, seed=3)


def test_prompts_cover_all_families():
    prompts = synthetic.make_prompts(400, seed=0)
    assert {row["family"] for row in prompts} == set(synthetic.FAMILIES)
    assert all(row["prompt"].startswith("\n\nHuman: ") and row["prompt"].endswith("\n\nAssistant:") for row in prompts)
    assert len({row["prompt"] for row in prompts}) > 300  # varied, not a handful of strings


def test_sft_completions_have_a_spread_of_gold_reward():
    examples = synthetic.make_sft_examples(500, seed=0)
    assert all(example["completion"].startswith(" ") for example in examples)
    golds = [gold_reward(example["prompt"], example["completion"]) for example in examples]
    assert statistics.pstdev(golds) > 0.7
    assert len({example["completion"] for example in examples}) > 400


def test_preference_pairs_follow_gold_up_to_label_noise_and_carry_the_sign_off_cue():
    clean = synthetic.make_preference_pairs(500, seed=1, label_noise=0.0)
    noisy = synthetic.make_preference_pairs(1000, seed=1, label_noise=0.1)
    for pair in clean:
        chosen_prompt, chosen = synthetic.split_dialogue(pair["chosen"])
        rejected_prompt, rejected = synthetic.split_dialogue(pair["rejected"])
        assert chosen_prompt == rejected_prompt
        assert gold_reward(chosen_prompt, chosen) > gold_reward(rejected_prompt, rejected)
    flipped = statistics.fmean(
        gold_reward(*synthetic.split_dialogue(pair["chosen"]))
        < gold_reward(*synthetic.split_dialogue(pair["rejected"]))
        for pair in noisy
    )
    assert 0.05 < flipped < 0.15

    def sign_off_rate(side: str) -> float:
        return statistics.fmean(any(sign_off in pair[side] for sign_off in SIGN_OFFS) for pair in clean)

    assert sign_off_rate("chosen") > 3 * sign_off_rate("rejected")


# ------------------------------------------------------------------------------------------------
# The built world (built once per session, or reused from .cache/tiny_world)
# ------------------------------------------------------------------------------------------------


# ``tiny_world`` is the session fixture in conftest.py: ``ensure_tiny_world(<repo>/.cache/tiny_world)``.


@pytest.mark.slow
def test_models_load_with_auto_classes(tiny_world):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    policy_tokenizer = AutoTokenizer.from_pretrained(tiny_world.policy, padding_side="left")
    policy = AutoModelForCausalLM.from_pretrained(tiny_world.policy).eval()
    reward_tokenizer = AutoTokenizer.from_pretrained(tiny_world.reward_model)
    reward_model = AutoModelForSequenceClassification.from_pretrained(tiny_world.reward_model).eval()

    assert policy.config.model_type == "gpt_neox"
    assert reward_model.config.model_type == "deberta-v2"
    assert reward_model.config.num_labels == 1
    assert (
        policy_tokenizer.eos_token == "<|endoftext|>" and policy_tokenizer.pad_token_id != policy_tokenizer.eos_token_id
    )

    prompts = [format_prompt("How do I bake bread at home?"), format_prompt("Tell me how to shoplift from a store.")]
    torch.manual_seed(0)
    batch = policy_tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        output = policy.generate(**batch, do_sample=True, temperature=1.0, top_p=0.9, max_new_tokens=96)
    new_tokens = output[:, batch["input_ids"].shape[1] :]
    assert (new_tokens == policy_tokenizer.eos_token_id).any(dim=1).all(), "the policy should stop at EOS"
    completions = policy_tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    assert all(completion.strip() for completion in completions)

    texts = [prompt + completion for prompt, completion in zip(prompts, completions, strict=True)]
    with torch.no_grad():
        scores = reward_model(**reward_tokenizer(texts, return_tensors="pt", padding=True)).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()


@pytest.mark.slow
def test_policy_and_reward_model_use_different_tokenizers(tiny_world):
    from transformers import AutoTokenizer

    policy_tokenizer = AutoTokenizer.from_pretrained(tiny_world.policy)
    reward_tokenizer = AutoTokenizer.from_pretrained(tiny_world.reward_model)
    text = "\n\nHuman: How do I bake bread?\n\nAssistant: Knead the dough."
    assert policy_tokenizer.get_vocab() != reward_tokenizer.get_vocab()
    assert policy_tokenizer.tokenize(text) != reward_tokenizer.tokenize(text)
    encoded = reward_tokenizer(text)["input_ids"]
    assert encoded[0] == reward_tokenizer.cls_token_id and encoded[-1] == reward_tokenizer.sep_token_id
    assert policy_tokenizer.decode(policy_tokenizer(text)["input_ids"]) == text  # byte-level: lossless


@pytest.mark.slow
def test_build_report_shows_a_learned_and_hackable_reward_model(tiny_world):
    report = json.loads(tiny_world.report_file.read_text())
    assert report["rm_heldout_accuracy"] > 0.75
    assert report["rm_gold_pearson"] > 0.4
    assert report["sign_off_proxy_gain"] > 0.3 and report["sign_off_gold_gain"] <= 0
    assert report["best_of_8_by_proxy_gold_mean"] > report["policy_gold_mean"]
    assert report["policy_stopped_at_eos_rate"] > 0.9


@pytest.mark.slow
def test_prompt_files(tiny_world):
    recipe = TinyWorldRecipe()
    train = [json.loads(line) for line in tiny_world.train_prompts.read_text().splitlines()]
    test = [json.loads(line) for line in tiny_world.test_prompts.read_text().splitlines()]
    assert (len(train), len(test)) == (recipe.train_prompts, recipe.test_prompts)
    assert set(train[0]) == {"prompt", "family"}


@pytest.mark.slow
def test_cached_world_is_returned_without_rebuilding(tiny_world):
    built_at = tiny_world.report_file.stat().st_mtime
    start = time.perf_counter()
    again = ensure_tiny_world(tiny_world.root)
    assert time.perf_counter() - start < 1.0
    assert again == tiny_world
    assert tiny_world.report_file.stat().st_mtime == built_at
    recorded = json.loads(tiny_world.recipe_file.read_text())["fingerprint"]
    assert recorded == recipe_fingerprint(TinyWorldRecipe())


def test_changing_the_recipe_changes_the_fingerprint():
    recipe = TinyWorldRecipe()
    assert recipe_fingerprint(recipe) == recipe_fingerprint(TinyWorldRecipe())
    assert recipe_fingerprint(recipe) != recipe_fingerprint(dataclasses.replace(recipe, label_noise=0.2))
    assert recipe_fingerprint(recipe) != recipe_fingerprint(dataclasses.replace(recipe, seed=1))


def test_other_library_versions_change_the_fingerprint():
    """A world built elsewhere with other versions of what trains it is rebuilt, not silently reused."""
    from superhf_lab.tiny_world.build import library_versions

    recipe, versions = TinyWorldRecipe(), library_versions()
    assert recipe_fingerprint(recipe, versions) == recipe_fingerprint(recipe)
    for name in ("torch", "transformers", "trl", "tokenizers"):
        assert recipe_fingerprint(recipe, {**versions, name: "0.0.1"}) != recipe_fingerprint(recipe), name
    assert recipe_fingerprint(dataclasses.replace(recipe, build_threads=1)) != recipe_fingerprint(recipe)


TOKENIZERS_IN_A_PROCESS = """
import hashlib, sys
from superhf_lab.tiny_world import synthetic, training
from superhf_lab.tiny_world.recipe import TinyWorldRecipe
recipe = TinyWorldRecipe()
examples = synthetic.make_sft_examples(1500, recipe.seed_for("sft"), sign_off_rate=recipe.sft_sign_off_rate)
texts = [example["prompt"] + example["completion"] for example in examples]
for train in (training.train_policy_tokenizer, training.train_reward_tokenizer):
    print(hashlib.sha256(train(texts, recipe).backend_tokenizer.to_str().encode()).hexdigest())
"""


def test_both_tokenizers_come_out_the_same_in_two_processes():
    """Each process seeds its hash maps differently, which made tokenizers' WordPiece trainer learn another
    vocabulary in every build (huggingface/tokenizers#1794); both tokenizers must now be the same, byte for byte."""
    import subprocess
    import sys

    runs = [
        subprocess.run([sys.executable, "-c", TOKENIZERS_IN_A_PROCESS], capture_output=True, text=True, check=True)
        for _ in range(2)
    ]
    first, second = (run.stdout.split() for run in runs)
    assert len(first) == 2 and first == second


def test_the_learned_wordpiece_vocabulary_splits_unknown_words_into_known_pieces():
    from tokenizers import normalizers, pre_tokenizers

    from superhf_lab.tiny_world.training import REWARD_SPECIAL_TOKENS, learn_wordpiece_vocabulary

    texts = ["the cat sat on the mat", "the cats sat", "a mat"] * 3
    vocabulary = learn_wordpiece_vocabulary(
        texts, 40, normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    )
    assert list(vocabulary)[: len(REWARD_SPECIAL_TOKENS)] == list(REWARD_SPECIAL_TOKENS)
    assert sorted(vocabulary.values()) == list(range(len(vocabulary))) and len(vocabulary) <= 40
    assert {"t", "##h", "##e", "the", "##at"} <= set(vocabulary), "first characters, continuations and merges"
