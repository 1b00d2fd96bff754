"""The pieces of a SuperHF superbatch, checked on small hand-made inputs and a tiny random GPT-NeoX."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from tolerances import adam_tolerance, assert_within, fp32_tolerance
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from superhf_lab.algorithms.superhf_config import SuperHFConfig
from superhf_lab.algorithms.superhf_trainer import SuperHFTrainer, minibatch_loss, select_top_k
from superhf_lab.config.schema import TextConfig
from superhf_lab.core.text import reward_model_input, trim_completion
from superhf_lab.training.completions import Completion
from superhf_lab.training.policies import with_starting_policy
from superhf_lab.training.sequences import loss_terms, pad_examples, position_ids_for


def completion_ce_and_kl(logits, reference_logits, input_ids, completion_mask):
    """Per completion: mean CE over its tokens and the exact per-token KL, from the loss's own terms."""
    terms = loss_terms(logits, reference_logits, input_ids, completion_mask)
    return terms.ce_sum / terms.tokens.clamp(min=1), terms.kl


@pytest.mark.parametrize(
    ("raw", "expected", "was_cut"),
    [
        (" Knead the dough.\n\nHuman: thanks", " Knead the dough.", True),
        (" Sure.\n\nAssistant: more", " Sure.", True),
        (" Yes.\nHuman: and?", " Yes.", True),
        (" Fine.\n\nH: ok", " Fine.", True),
        (" Great answer! Human: yes, you are right.", " Great answer!", True),  # a scripted human reply inline
        (" Plan A: rest, then go.  ", " Plan A: rest, then go.", False),
        (" Human rights matter.", " Human rights matter.", False),
        ("\n\nHuman: hi", "", True),
    ],
)
def test_trim_completion_cuts_at_the_next_turn(raw, expected, was_cut):
    assert trim_completion(raw) == (expected, was_cut)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" Human rights matter.", ""),  # the reference cuts at any "Human" or "Assistant"
        (" Step one.\n\nStep two: mix.", " Step one."),  # and at any "\n\n<label>:"
        (" Plan A: rest.", " Plan A: rest."),
    ],
)
def test_reference_cut_pattern_is_the_reference_trainers_regex(raw, expected):
    assert trim_completion(raw, "reference")[0] == expected


def test_reward_input_fills_the_template_once_with_the_stripped_completion():
    assert reward_model_input("{prompt} {completion}", "\n\nHuman: hi\n\nAssistant:", "  Hello.\n") == (
        "\n\nHuman: hi\n\nAssistant: Hello."
    )
    assert reward_model_input("Be kind.{prompt} {completion}", "{completion}?", "a") == "Be kind.{completion}? a"


def _completion(prompt_index, reward, text="answer"):
    return Completion(
        prompt=f"p{prompt_index}", prompt_index=prompt_index, text=text, num_tokens=1, finished=True, reward=reward
    )


def test_select_top_k_keeps_the_best_per_prompt_and_drops_empty_ones():
    completions = [
        _completion(0, 0.1),
        _completion(0, 0.9),
        _completion(0, 5.0, text="   "),
        _completion(0, 0.5),
        _completion(1, -2.0),
        _completion(1, -1.0),
    ]
    assert select_top_k(completions, top_k=1) == [1, 5]
    assert select_top_k(completions, top_k=2) == [1, 3, 4, 5]


def test_select_top_k_length_penalty_prefers_shorter_completions():
    completions = [_completion(0, 1.0, text="x" * 100), _completion(0, 0.9, text="x")]
    assert select_top_k(completions, top_k=1) == [0]
    assert select_top_k(completions, top_k=1, length_penalty=0.01) == [1]


def test_log_length_penalty_is_the_reference_trainers_form():
    """Characters of the stripped text: 100 and 2. Linear, 0.01: 0.0 vs 0.78 keeps the short one; log, 0.05:
    1 - 0.05 log 100 = 0.770 vs 0.8 - 0.05 log 2 = 0.765 keeps the long one; log, 0.5: -1.30 vs 0.45 the short."""
    completions = [_completion(0, 1.0, text="x" * 100), _completion(0, 0.8, text=" xx ")]
    assert select_top_k(completions, top_k=1, length_penalty=0.01, length_penalty_form="linear") == [1]
    assert select_top_k(completions, top_k=1, length_penalty=0.05, length_penalty_form="log") == [0]
    assert select_top_k(completions, top_k=1, length_penalty=0.5, length_penalty_form="log") == [1]


@pytest.mark.parametrize("side", ["left", "right"])
def test_completion_mask_covers_exactly_the_completion_tokens(side):
    prompts, completions = [[5, 6, 7], [8]], [[9, 10], [11, 12, 13, 14]]
    input_ids, attention, mask = pad_examples(prompts, completions, pad_token_id=0, padding_side=side)
    for row in range(2):
        real = input_ids[row][attention[row].bool()].tolist()
        assert real == prompts[row] + completions[row]
        assert input_ids[row][mask[row].bool()].tolist() == completions[row]
    assert not (mask.bool() & ~attention.bool()).any(), "padding is never part of the completion mask"


def test_ce_uses_the_logits_that_predict_completion_tokens():
    """Position t's logits predict token t+1: put all mass on the right next token and CE is ~0."""
    vocab, sequence = 20, [3, 4, 5, 6, 7]
    input_ids = torch.tensor([sequence])
    completion_mask = torch.tensor([[0, 0, 1, 1, 1]])
    logits = torch.full((1, 5, vocab), -30.0)
    for t in range(4):
        logits[0, t, sequence[t + 1]] = 30.0  # a perfect next-token predictor
    logits[0, 4, 0] = 30.0  # the last position predicts nothing in the sequence
    ce, kl = completion_ce_and_kl(logits, logits, input_ids, completion_mask)
    # The exact CE is 19 exp(-60) nats; float32 gets the log-softmax's normaliser (20 exp terms of at most 1) to 20 eps
    # relative, so its log to 20 eps nats, then averages 3 tokens. A model scored on the wrong positions: > 10 nats.
    assert ce.item() == pytest.approx(0.0, abs=fp32_tolerance(vocab + 3))
    assert kl.item() == 0.0, "exact: the same logits on both sides make every log p - log q exactly 0"
    unshifted_ce = F.cross_entropy(logits[0], input_ids[0], reduction="none")[completion_mask[0].bool()].mean()
    assert unshifted_ce.item() > 10, "the reference trainer's unshifted mask would score this as a terrible model"


def test_kl_matches_a_direct_computation():
    """Against the definition in float64 (exact for float32's purposes), term by term."""
    torch.manual_seed(0)
    vocab = 11
    logits, reference = torch.randn(2, 6, vocab), torch.randn(2, 6, vocab)
    input_ids = torch.randint(0, vocab, (2, 6))
    completion_mask = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 0]])
    _, kl = completion_ce_and_kl(logits, reference, input_ids, completion_mask)
    for row in range(2):
        per_token, log_ratios = [], []
        for t in range(5):
            if completion_mask[row, t + 1]:
                p = torch.softmax(logits[row, t].double(), -1)
                q = torch.softmax(reference[row, t].double(), -1)
                per_token.append(sum(p[v] * math.log(p[v] / q[v]) for v in range(vocab)))
                log_ratios += [abs(math.log(p[v] / q[v])) for v in range(vocab)]
        # fp32, per token: log p and log q off by their normalisers' vocab x eps nats (exp terms of at most 1), p by
        # as much relative, and the vocab terms p (log p - log q) summed, each at most max |log p - log q| in size.
        tolerance = fp32_tolerance(vocab, 2 + 2 * max(log_ratios)) + fp32_tolerance(len(per_token), float(kl[row]))
        assert kl[row].item() == pytest.approx(float(sum(per_token) / len(per_token)), abs=tolerance)
    assert (kl >= 0).all()


@pytest.fixture(scope="module")
def tiny_causal_lm():
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    return GPTNeoXForCausalLM(config).eval()


def _reduction_length(config: GPTNeoXConfig, positions: int, tokens: int, backward: bool = False) -> int:
    """Additions along the longest float32 chain to a CE or KL summed over ``tokens``: per layer a layer norm's and
    a projection's over the hidden size, the attention's over the positions and the MLP's; the log-softmax's
    normaliser and the KL's own sum over the vocabulary (backward: the output layer's); the sum over the tokens.
    A gradient (``backward``) also goes back through the layers.

    CE measured in its own units (its terms are log-probabilities of its size), KL in nats (a normaliser of exp
    terms of at most 1 is off by vocabulary x eps nats, whatever the logits' size)."""
    layers = config.num_hidden_layers * (2 * config.hidden_size + config.intermediate_size + positions)
    return layers * (1 + backward) + 2 * config.vocab_size + tokens


def _batch(prompts, completions, side="right"):
    input_ids, attention, mask = pad_examples(prompts, completions, pad_token_id=0, padding_side=side)
    return {"input_ids": input_ids, "attention_mask": attention, "position_ids": position_ids_for(attention)}, mask


def test_reference_loss_equals_the_reference_trainers_formula(tiny_causal_lm):
    """openfeedback/superhf SuperHFTrainer.finetune_language_model, transcribed: the model's own CE over labelled
    tokens, plus kl_coef x KLDivLoss(batchmean, log_target) of each example at its labelled positions, clamped at 0
    and added per example."""
    torch.manual_seed(3)
    reference = GPTNeoXForCausalLM(tiny_causal_lm.config).eval()
    inputs, mask = _batch([[1, 2, 3, 4, 5], [6], [7, 8]], [[7, 8], [9, 10, 11, 12, 13, 14], [15, 16, 17]])
    kl_coef = 0.35
    labels = inputs["input_ids"].masked_fill(mask == 0, -100)
    with torch.no_grad():
        outputs = tiny_causal_lm(**inputs, labels=labels)
        reference_logits = reference(**inputs).logits
    expected = outputs.loss
    logp_online, logp_original = F.log_softmax(outputs.logits, dim=2), F.log_softmax(reference_logits, dim=2)
    kl_loss = torch.nn.KLDivLoss(reduction="batchmean", log_target=True)
    for i in range(labels.shape[0]):
        positions = labels[i] != -100
        kl = torch.maximum(kl_loss(logp_online[i, positions, :], logp_original[i, positions, :]), torch.tensor(0.0))
        expected = expected + kl_coef * kl

    terms = loss_terms(outputs.logits, reference_logits, inputs["input_ids"], mask, "reference_to_policy", "unshifted")
    ce, kl_penalty = minibatch_loss(
        terms, kl_coef, "reference", minibatch_size=3, minibatch_tokens=int(terms.tokens.sum())
    )
    # Both from the same logits, reduced in other orders: the vocabulary twice (normaliser, then KL's sum), the
    # labelled tokens and the 3 examples; the CE part in its own units, the KL part (0.35 x 3 KLs) in nats.
    length = 2 * tiny_causal_lm.config.vocab_size + int(terms.tokens.sum()) + 3
    rtol, atol = fp32_tolerance(length), fp32_tolerance(length, kl_coef * 3)
    torch.testing.assert_close(ce + kl_penalty, expected, rtol=rtol, atol=atol)
    torch.testing.assert_close(ce, outputs.loss, rtol=rtol, atol=0)

    default_ce, default_kl = completion_ce_and_kl(outputs.logits, reference_logits, inputs["input_ids"], mask)
    ce, kl_penalty = minibatch_loss(
        loss_terms(outputs.logits, reference_logits, inputs["input_ids"], mask, "policy_to_reference", "shifted"),
        kl_coef,
        "mean",
        3,
        0,
    )
    # The same per-completion values either way (loss_terms is deterministic), then 6 roundings each: a 3-term sum, a
    # division, the coefficient's product and the final sum.
    torch.testing.assert_close(
        ce + kl_penalty, default_ce.mean() + kl_coef * default_kl.mean(), rtol=fp32_tolerance(6), atol=0
    )
    assert not torch.allclose(ce + kl_penalty, expected, rtol=rtol, atol=atol), (
        "the two losses differ on the same batch, by far more than float error"
    )


def test_loss_is_the_same_with_left_and_right_padding(tiny_causal_lm):
    prompts, completions = [[1, 2, 3, 4, 5], [6]], [[7, 8], [9, 10, 11, 12, 13, 14]]
    results = {}
    for side in ("left", "right"):
        input_ids, attention, mask = pad_examples(prompts, completions, pad_token_id=0, padding_side=side)
        with torch.no_grad():
            logits = tiny_causal_lm(
                input_ids=input_ids, attention_mask=attention, position_ids=position_ids_for(attention)
            ).logits
        results[side] = completion_ce_and_kl(logits, logits * 0.5, input_ids, mask)
    # Padding moves the sums around (the attention's, then everything after it): CE to its fp32 bound relative (3.5
    # nats here), KL to it in nats (2e-5 nats, 2% of these KLs of 1e-3); a misplaced mask scores other tokens (0.1).
    tolerance = fp32_tolerance(_reduction_length(tiny_causal_lm.config, input_ids.shape[1], max(map(len, completions))))
    for left, right in zip(results["left"], results["right"]):
        torch.testing.assert_close(left, right, rtol=tolerance, atol=tolerance)


class _ConstantScorer:
    def score(self, prompts, completions, reward_input):
        return [0.0] * len(prompts)


class _Tokenizer:
    """Whitespace-free toy tokenizer: one id per character."""

    eos_token_id = 1
    pad_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return type("Encoded", (), {"input_ids": [2 + ord(ch) % 30 for ch in text]})()


def _trainer(config, policy, tokenizer, scorer=None):
    policy, starting = with_starting_policy(policy, config.lora)
    return SuperHFTrainer(
        config,
        0.1,
        TextConfig(),
        policy,
        starting,
        tokenizer,
        scorer or _ConstantScorer(),
        None,
        torch.device("cpu"),
        "fp32",
    )


def test_nonfinite_losses_are_skipped_counted_and_limited(tiny_causal_lm):
    policy = GPTNeoXForCausalLM(tiny_causal_lm.config)
    trainer = _trainer(SuperHFConfig(max_nonfinite_losses=1, minibatch_size_finetuning=1), policy, _Tokenizer())
    kept = [Completion("ab", 0, "cd", 2, True)]
    with torch.no_grad():
        policy.get_output_embeddings().weight[:, 0] = float("nan")  # poisons every logit
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    losses = trainer.finetune(kept)
    assert trainer.nonfinite_losses == 1 and math.isnan(losses["loss/total"])
    for name, parameter in policy.named_parameters():  # exact: a skipped step touches no weight
        torch.testing.assert_close(
            parameter, before[name], rtol=0, atol=0, equal_nan=True, msg=f"{name} changed on a NaN loss"
        )
    with pytest.raises(FloatingPointError, match="max_nonfinite_losses"):
        trainer.finetune(kept)


def test_a_checkpoint_with_optimizer_state_keyed_by_position_still_resumes(tiny_causal_lm):
    """Checkpoints written before 3f24bcd hold torch's own optimizer state dict, parameters numbered in order."""
    config = SuperHFConfig(minibatch_size_finetuning=1)
    trainer = _trainer(config, GPTNeoXForCausalLM(tiny_causal_lm.config), _Tokenizer())
    trainer.finetune([Completion("ab", 0, "cd", 2, True), Completion("ab", 0, "ef", 2, True)])
    saved = copy.deepcopy({**trainer.state_dict(), "optimizer": trainer.optimizer.state_dict()})
    assert isinstance(next(iter(saved["optimizer"]["state"])), int)
    resumed = _trainer(config, GPTNeoXForCausalLM(tiny_causal_lm.config), _Tokenizer())
    resumed.load_state_dict(saved)
    expected, actual = trainer.state_dict(), resumed.state_dict()
    assert actual["optimizer"]["param_groups"] == expected["optimizer"]["param_groups"]
    # Exact: loading copies the saved tensors, and reading them back computes nothing.
    for part in ("policy", "scheduler", "batch_sizes"):
        torch.testing.assert_close(actual[part], expected[part], rtol=0, atol=0, msg=part)
    torch.testing.assert_close(actual["optimizer"]["state"], expected["optimizer"]["state"], rtol=0, atol=0)


CPU_OOM = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 17179869184 bytes."


def _fails_above(function, limit, size_of):
    """``function`` that raises the CPU allocator's out-of-memory error when its batch is above ``limit``."""

    def wrapped(*args, **kwargs):
        if size_of(*args, **kwargs) > limit:
            raise RuntimeError(CPU_OOM)
        return function(*args, **kwargs)

    return wrapped


@pytest.mark.parametrize("reduction", ["mean", "reference"])
def test_finetuning_out_of_memory_halves_into_micro_batches_with_the_same_update(tiny_causal_lm, reduction):
    kept = [Completion(f"p{i}", i, "reply " * (i + 1), 3, True) for i in range(6)]
    updated, gradients = {}, {}
    for limit in (None, 2):
        torch.manual_seed(1)
        policy = GPTNeoXForCausalLM(tiny_causal_lm.config)
        config = SuperHFConfig(
            minibatch_size_finetuning=8,
            max_grad_norm=None,
            loss_reduction=reduction,
            kl_direction="reference_to_policy" if reduction == "reference" else "policy_to_reference",
        )
        trainer = _trainer(config, policy, _Tokenizer())
        if limit:
            policy.forward = _fails_above(policy.forward, limit, lambda **inputs: inputs["input_ids"].shape[0])
        trainer.finetune(kept)
        updated[limit] = (dict(policy.named_parameters()), trainer.batch_sizes["finetuning"])
        gradients[limit] = {name: p.grad.clone() for name, p in policy.named_parameters() if p.grad is not None}
    assert (updated[2][1].size, updated[2][1].halvings) == (2, 2), "8 -> 4 -> 2"
    # One optimizer step over the same minibatch either way, its sums split over micro-batches: the gradients to
    # their fp32 bound (forward, vocabulary both ways, back through the layers, the sum over every token) at each
    # tensor's scale, the weights to what Adam can make of the gradients' differences (tolerances.adam_tolerance).
    lengths = [len(c.prompt) + len(c.text) + 1 for c in kept]  # the toy tokenizer: a token a character, and EOS
    length = _reduction_length(tiny_causal_lm.config, max(lengths), sum(lengths), backward=True)
    for name, gradient in gradients[None].items():
        torch.testing.assert_close(
            gradients[2][name], gradient, rtol=0, atol=fp32_tolerance(length, gradient.abs().max().item()), msg=name
        )
    weights = {name: p.detach() for name, p in updated[None][0].items()}
    bounds = adam_tolerance([gradients[None]], [gradients[2]], weights, config.learning_rate)
    assert_within({name: p.detach() for name, p in updated[2][0].items()}, weights, bounds)


def test_out_of_memory_beyond_the_halving_limit_names_the_key(tiny_causal_lm):
    policy = GPTNeoXForCausalLM(tiny_causal_lm.config)
    config = SuperHFConfig(minibatch_size_finetuning=8, max_oom_halvings=1)
    trainer = _trainer(config, policy, _Tokenizer())
    policy.forward = _fails_above(policy.forward, 1, lambda **inputs: inputs["input_ids"].shape[0])
    with pytest.raises(
        RuntimeError, match="algorithm.minibatch_size_finetuning=4 after 1 halvings .*max_oom_halvings=1"
    ):
        trainer.finetune([Completion(f"p{i}", i, "reply", 1, True) for i in range(8)])


class _BatchLimitedScorer:
    """A reward model that runs out of memory on minibatches above 3."""

    batch_size = 32

    def score(self, prompts, completions, reward_input):
        if self.batch_size > 3:
            raise RuntimeError(CPU_OOM)
        return [float(len(c)) for c in completions]


def test_generation_and_scoring_out_of_memory_halve_and_go_on(tiny_world):
    from superhf_lab.config.schema import ModelConfig
    from superhf_lab.training.models import load_policy

    policy, tokenizer = load_policy(ModelConfig(name_or_path=str(tiny_world.policy)), torch.device("cpu"))
    config = SuperHFConfig(superbatch_size=4, minibatch_size_generating=8, minibatch_size_scoring=32, max_new_tokens=4)
    trainer = _trainer(config, policy, tokenizer, _BatchLimitedScorer())
    # the sampler's forward passes (the prompt's, then one per token) run out of memory above 2 rows
    policy.forward = _fails_above(policy.forward, 2, lambda **inputs: inputs["input_ids"].shape[0])
    completions = trainer.generate(["\n\nHuman: How do I bake bread?\n\nAssistant:"] * 2)
    assert len(completions) == 8 and trainer.batch_sizes["generating"].size == 2
    trainer.score(completions)
    assert trainer.batch_sizes["scoring"].size == 2 and trainer.batch_sizes["scoring"].halvings == 4
    assert [c.reward for c in completions] == [float(len(c.text)) for c in completions]


def test_loss_terms_carry_schulmans_estimates_of_the_logged_kl_on_the_completions_own_tokens():
    """k1, k2 and k3 of each completion are token means of the sampled tokens' log-ratio r (r, r^2/2, e^-r - 1 + r),
    over the tokens whose CE counts; and on tokens drawn from the policy, k1 and k3 average to the exact KL."""
    from superhf_lab.training.sequences import KL_ESTIMATORS, loss_terms

    torch.manual_seed(0)
    vocabulary, length, rows = 6, 400, 2
    logits = torch.randn(rows, length, vocabulary)
    reference_logits = logits + 0.3 * torch.randn(rows, length, vocabulary)
    drawn = torch.distributions.Categorical(logits=logits[:, :-1]).sample()  # token t+1 drawn from position t
    input_ids = torch.cat([torch.zeros(rows, 1, dtype=torch.long), drawn], dim=1)
    completion_mask = torch.ones(rows, length, dtype=torch.long)
    completion_mask[:, 0] = 0  # the first token is the prompt
    terms = loss_terms(logits, reference_logits, input_ids, completion_mask)
    ratio = (
        logits[:, :-1].log_softmax(-1).gather(-1, drawn[..., None])
        - reference_logits[:, :-1].log_softmax(-1).gather(-1, drawn[..., None])
    ).squeeze(-1)
    expected = torch.stack([ratio, ratio**2 / 2, torch.expm1(-ratio) + ratio], dim=-1).mean(1)
    assert KL_ESTIMATORS == ("k1", "k2", "k3")
    torch.testing.assert_close(terms.estimates, expected, rtol=1e-5, atol=1e-6)
    for column, values in ((0, ratio), (2, torch.expm1(-ratio) + ratio)):  # unbiased: within 4 standard errors
        error = 4 * values.std(dim=1) / math.sqrt(values.shape[1])
        assert ((terms.estimates[:, column] - terms.kl).abs() < error).all(), column
