"""Build the fixture that pins the lab's PPO update to TRL 1.12's: one ``trl.experimental.ppo.PPOTrainer`` update on a
fixed rollout, recorded with everything needed to replay it (weights before, rollout tokens and scores, the epochs'
minibatch orders, the gradients of every optimizer step, the weights after and TRL's logged statistics).

TRL removed PPOTrainer after 1.12 (TRL PR #7020), so this runs in a scratch environment of its own; it imports only
torch, transformers, datasets and trl, never the lab:

    python3 -m venv /tmp/trl112 && /tmp/trl112/bin/pip install -q torch==2.13.0 && \
      /tmp/trl112/bin/pip install -q trl==1.12.0 "transformers==5.23.*" "datasets==5.2.*" "accelerate==1.15.*" && \
      /tmp/trl112/bin/python tools/ppo_trl_fixture.py tests/fixtures/ppo_trl_1_12.pt

The reference model is the policy with noise added to its weights, so the KL penalty is not zero. The rollout is
fixed by replacing TRL's ``batch_generation`` (the sampled tokens are ours; the log-probabilities it
returns are the policy's own, as TRL's generation would give them) and its reward model (a stand-in that returns
each completion's fixed score). Every completion fills the response width, some ending with EOS, so TRL's score
position (one past a completion that ends earlier) and the lab's (the last token) coincide; see
``superhf_lab/algorithms/ppo_trainer.py`` for where the two differ on purpose.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from torch import nn

VOCAB, EOS, PAD = 64, 0, 1
WIDTH = 6  # response tokens per completion
QUERY_LENGTHS = [3, 5, 4, 6, 3, 4, 5, 6, 6, 3, 4, 5, 3, 6, 5, 4]  # 16 rows: TRL whitens only minibatches of >= 8
CASES = {
    "k3": {"kl_estimator": "k3", "kl_coef": 0.05, "whiten_rewards": False, "missing_eos_penalty": None,
           "learning_rate": 1e-3, "cliprange": 0.2},
    "k1_whitened_eos_penalty": {"kl_estimator": "k1", "kl_coef": 0.2, "whiten_rewards": True,
                                "missing_eos_penalty": 1.0, "learning_rate": 3e-3, "cliprange": 0.1},
}  # fmt: skip
SHARED = {"num_mini_batches": 2, "num_ppo_epochs": 2, "cliprange_value": 0.2, "vf_coef": 0.1, "gamma": 1.0,
          "lam": 0.95, "temperature": 1.0}  # fmt: skip


def model_config():
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        classifier_dropout=0.0,
        eos_token_id=EOS,
        bos_token_id=EOS,
        pad_token_id=PAD,
        tie_word_embeddings=False,
        num_labels=1,  # the value model's head: one value per position
    )


def tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": EOS, "<pad>": PAD, **{f"t{i}": i for i in range(2, VOCAB)}}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<eos>")), eos_token="<eos>", pad_token="<pad>"
    )
    fast.padding_side = "left"
    return fast


def rollout(generator: torch.Generator) -> tuple[list[list[int]], list[list[int]], list[float]]:
    queries = [torch.randint(2, VOCAB, (n,), generator=generator).tolist() for n in QUERY_LENGTHS]
    responses = [torch.randint(2, VOCAB, (WIDTH,), generator=generator).tolist() for _ in QUERY_LENGTHS]
    for row in range(0, len(responses), 2):
        responses[row][-1] = EOS  # half the completions end, on the last position
    scores = (torch.randn(len(QUERY_LENGTHS), generator=generator) * 2).tolist()
    return queries, responses, scores


class FixedScores(nn.Module):
    """TRL's ``get_reward`` runs ``model.<base_model_prefix>`` and ``model.score`` and reads the last token's value:
    this stand-in puts each completion's fixed score at every position."""

    base_model_prefix = "backbone"

    def __init__(self, scores_by_row: dict[tuple[int, ...], float]) -> None:
        super().__init__()
        self.scores_by_row = scores_by_row
        self.backbone = _Backbone(self)
        self.score = nn.Identity()


class _Backbone(nn.Module):
    def __init__(self, owner: FixedScores) -> None:
        super().__init__()
        self._owner = [owner]

    def forward(self, input_ids, attention_mask, **_):
        from transformers.modeling_outputs import BaseModelOutput

        rows = [tuple(ids[mask].tolist()) for ids, mask in zip(input_ids, attention_mask.bool())]
        scores = torch.tensor([self._owner[0].scores_by_row[row] for row in rows])
        hidden = scores.view(-1, 1, 1).expand(-1, input_ids.shape[1], 1)
        return BaseModelOutput(last_hidden_state=hidden, hidden_states=(hidden,))


def run_case(name: str, settings: dict, initial: dict, queries, responses, scores) -> dict:
    import trl.experimental.ppo.ppo_trainer as trl_ppo
    from datasets import Dataset
    from transformers import GPTNeoXForCausalLM, GPTNeoXForSequenceClassification, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    policy = GPTNeoXForCausalLM(model_config())
    policy.load_state_dict(initial["policy"])
    value_model = GPTNeoXForSequenceClassification(model_config())
    value_model.load_state_dict(initial["value_model"])
    reference = GPTNeoXForCausalLM(model_config())
    reference.load_state_dict(initial["reference"])
    responses_by_query = {tuple(q): r for q, r in zip(queries, responses)}
    scores_by_row = {tuple(q + r): s for q, r, s in zip(queries, responses, scores)}
    seen_queries: list[list[int]] = []

    def fixed_generation(model, queries_batch, forward_batch_size, pad_token_id, generation_config):
        """Our tokens; the log-probabilities TRL's sampling would return: the policy's logits / temperature."""
        rows = [q[q != pad_token_id].tolist() for q in queries_batch]
        seen_queries.extend(rows)
        response = torch.tensor([responses_by_query[tuple(row)] for row in rows])
        query_response = torch.cat([queries_batch, response], 1)
        logits = trl_ppo.forward(model, query_response, pad_token_id).logits[:, queries_batch.shape[1] - 1 : -1]
        return query_response, logits / (generation_config.temperature)

    trl_ppo.batch_generation = fixed_generation
    permutation, orders = np.random.permutation, []

    def recorded_permutation(n):
        order = permutation(n)
        orders.append(torch.tensor(order))
        return order

    np.random.permutation = recorded_permutation
    logs: dict[str, float] = {}

    class KeepLogs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            logs_seen.update(logs or {})

    logs_seen = logs
    args = PPOConfig(
        output_dir=f"/tmp/ppo_trl_fixture_{name}",
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        use_cpu=True,
        per_device_train_batch_size=len(queries),
        gradient_accumulation_steps=1,
        num_mini_batches=SHARED["num_mini_batches"],
        total_episodes=len(queries),
        num_ppo_epochs=SHARED["num_ppo_epochs"],
        learning_rate=settings["learning_rate"],
        lr_scheduler_type="linear",
        response_length=WIDTH,
        temperature=SHARED["temperature"],
        stop_token="eos",
        missing_eos_penalty=settings["missing_eos_penalty"],
        kl_coef=settings["kl_coef"],
        kl_estimator=settings["kl_estimator"],
        cliprange=settings["cliprange"],
        cliprange_value=SHARED["cliprange_value"],
        vf_coef=SHARED["vf_coef"],
        gamma=SHARED["gamma"],
        lam=SHARED["lam"],
        whiten_rewards=settings["whiten_rewards"],
        local_rollout_forward_batch_size=len(queries),
        num_sample_generations=0,
    )
    dataset = Dataset.from_dict({"input_ids": queries})
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer(),
        model=policy,
        ref_model=reference,
        reward_model=FixedScores(scores_by_row),
        train_dataset=dataset,
        value_model=value_model,
        eval_dataset=dataset.select(range(1)),
        callbacks=[KeepLogs()],
    )
    named = list(trainer.model.named_parameters())
    steps: list[dict[str, torch.Tensor]] = []
    step = trainer.optimizer.step

    def recording_step(*a, **k):
        steps.append({n: p.grad.detach().clone() for n, p in named if p.grad is not None})
        return step(*a, **k)

    trainer.optimizer.step = recording_step
    trainer.train()
    np.random.permutation = permutation
    group = trainer.optimizer.param_groups[0]
    return {
        "settings": {**SHARED, **settings, "effective_temperature": SHARED["temperature"] + 1e-7},
        "queries": seen_queries,  # in the order TRL's dataloader gave them: row i of the rollout
        "responses": [responses_by_query[tuple(q)] for q in seen_queries],
        "scores": [scores_by_row[tuple(q + responses_by_query[tuple(q)])] for q in seen_queries],
        "orders": orders,
        "steps": steps,
        "after": {n: p.detach().clone() for n, p in named},
        "adam": {key: group[key] for key in ("betas", "eps", "weight_decay")},
        "logs": {key: float(value) for key, value in logs.items() if isinstance(value, (int, float, str))},
    }


def main(out: str) -> None:
    import transformers
    import trl
    from transformers import GPTNeoXForCausalLM, GPTNeoXForSequenceClassification

    torch.manual_seed(0)
    policy = GPTNeoXForCausalLM(model_config()).state_dict()
    initial = {
        "policy": policy,
        "value_model": GPTNeoXForSequenceClassification(model_config()).state_dict(),
        # a reference apart from the policy, so the KL penalty is not zero
        "reference": {n: w + 0.05 * torch.randn_like(w) if w.is_floating_point() else w for n, w in policy.items()},
    }
    queries, responses, scores = rollout(torch.Generator().manual_seed(1))
    fixture = {
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__, "torch": str(torch.__version__)},
        "config": model_config().to_dict(),
        "eos": EOS,
        "pad": PAD,
        "initial": initial,
        "cases": {name: run_case(name, s, initial, queries, responses, scores) for name, s in CASES.items()},
    }
    torch.save(fixture, out)
    print(f"wrote {out} with TRL {trl.__version__}: cases {list(CASES)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/ppo_trl_1_12.pt")
