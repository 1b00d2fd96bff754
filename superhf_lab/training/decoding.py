"""One-token decoding steps for the lean sampler: a key/value cache that is written in place, and, for GPT-NeoX
policies (the tiny world's and Pythia's), a step that runs the model's own layers without transformers' per-call
machinery. On the tiny policy that machinery (output capturing, the causal mask, the rotary table, the modules'
wrappers) costs about a quarter of a step; the step here gives the same logits, bit for bit."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import GPTNeoXForCausalLM, PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer

# (next tokens (B,), their positions (B,), the attention mask so far (B, L) bool, the cache) -> next logits (B, V)
DecodeStep = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Cache], torch.Tensor]


class ReservedLayer(DynamicLayer):
    """A cache layer that holds ``capacity`` positions from its first update and writes each new key and value into
    them, where transformers' ``DynamicLayer`` concatenates (a copy of the whole cache per layer per step). Its keys
    and values are views of the positions written so far."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        rows, heads, _, width = key_states.shape
        self.key_buffer = key_states.new_empty(rows, heads, self.capacity, width)
        self.value_buffer = value_states.new_empty(rows, heads, self.capacity, value_states.shape[-1])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise ValueError(f"the cache holds {self.capacity} positions; this update needs {end}")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep only the rows ``indices`` (rows that stopped generating leave the batch), in new buffers."""
        if not self.is_initialized:
            return
        for name in ("key_buffer", "value_buffer"):
            held = getattr(self, name)
            kept = held.new_empty(len(indices), *held.shape[1:])
            kept[:, :, : self.length] = held[indices, :, : self.length]
            setattr(self, name, kept)
        self.keys, self.values = self.key_buffer[:, :, : self.length], self.value_buffer[:, :, : self.length]


def reserved_cache(policy: PreTrainedModel, capacity: int) -> Cache:
    """A cache of :class:`ReservedLayer`, one per decoder layer of ``policy``."""
    layers = policy.config.get_text_config(decoder=True).num_hidden_layers
    return Cache(layers=[ReservedLayer(capacity) for _ in range(layers)])


def decode_step(policy: PreTrainedModel, capacity: int, sharded_weights: bool) -> DecodeStep:
    """The fastest step that gives ``policy``'s own logits: :class:`GPTNeoXStep` for an unsharded GPT-NeoX policy
    (LoRA-wrapped or not) with SDPA attention, otherwise the model's forward."""
    base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    if (
        not sharded_weights  # sharded weights gather in the wrapped modules' forward hooks, so the model must run
        and isinstance(base, GPTNeoXForCausalLM)
        and base.config._attn_implementation == "sdpa"
        and base.config.rope_parameters.get("rope_type", "default") == "default"
    ):
        return GPTNeoXStep(base, capacity)

    return lambda tokens, positions, mask, cache: forward_logits(
        policy, tokens[:, None], positions[:, None], mask, cache
    )


def forward_logits(policy, input_ids, position_ids, attention_mask, cache: Cache) -> torch.Tensor:
    """The model's forward on these positions into ``cache``: the last position's next-token logits."""
    output = policy(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=attention_mask,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return output.logits[:, -1]


class GPTNeoXStep:
    """GPT-NeoX's forward for one new token per row, in its own operations and order (so the same floats): the
    embedding, per layer the input layer norm, the fused QKV projection, the rotary embedding (from a table of every
    position, computed once by the model's own rotary module), the cache, SDPA under the padding mask, the output
    projection and the (parallel or sequential) residual MLP; then the final layer norm and the head. The causal
    part of the mask is empty for one query, so the padding mask is the whole mask."""

    def __init__(self, model: GPTNeoXForCausalLM, capacity: int) -> None:
        self.model = model
        # the rotary module takes a tensor only for its dtype and device: a detached one, so that no hook on module
        # inputs (torch's FlopCounterMode tracks those that need gradients) sees a parameter under inference mode
        embedding = model.gpt_neox.embed_in.weight.detach()
        cos, sin = model.gpt_neox.rotary_emb(embedding, torch.arange(capacity, device=embedding.device)[None])
        # rotate_half(x) * sin == x[..., swap] * signed_sin exactly (a negation commutes with rounding), so queries
        # and keys rotate together in three operations
        half = cos.shape[-1] // 2
        self.swap = torch.cat([torch.arange(half, 2 * half), torch.arange(half)]).to(embedding.device)
        signed_sin = torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)
        # indexed by each row's position: (rows, heads, 1, query|key, rotary dimensions) after broadcasting
        self.cos, self.signed_sin = (table.view(capacity, 1, 1, 1, -1) for table in (cos[0], signed_sin))

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: Cache) -> torch.Tensor:
        model = self.model.gpt_neox
        hidden = model.embed_in(tokens[:, None])
        rows = hidden.shape[0]
        cos, signed_sin = self.cos[positions], self.signed_sin[positions]
        rotary = cos.shape[-1]
        attention_mask = mask[:, None, None, :]
        for layer, layer_cache in zip(model.layers, cache.layers):
            attention = layer.attention
            qkv = attention.query_key_value(layer.input_layernorm(hidden))
            # (rows, heads, 1, query|key|value, head size), as the model's chunk of each head's 3 x head size
            qkv = qkv.view(rows, 1, -1, 3, attention.head_size).transpose(1, 2)
            turning = qkv[..., :2, :rotary]
            turned = turning * cos + turning[..., self.swap] * signed_sin
            query_key = torch.cat([turned, qkv[..., :2, rotary:]], dim=-1)
            key, value = layer_cache.update(query_key[..., 1, :], qkv[..., 2, :])
            query = query_key[..., 0, :]
            attended = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, scale=attention.scaling
            )
            attended = attention.dense(attended.transpose(1, 2).reshape(rows, 1, -1))
            if layer.use_parallel_residual:
                hidden = layer.mlp(layer.post_attention_layernorm(hidden)) + attended + hidden
            else:
                attended = attended + hidden
                hidden = layer.mlp(layer.post_attention_layernorm(attended)) + attended
        return self.model.get_output_embeddings()(model.final_layer_norm(hidden))[:, -1]
