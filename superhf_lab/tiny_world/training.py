"""Training the tiny world's two tokenizers, its Pythia-style policy and its DeBERTa-style reward model.

The policy and the reward model deliberately get different tokenizers (byte-level BPE vs. a
lower-cased WordPiece), as in the SuperHF paper's Pythia policy scored by a DeBERTa reward model,
so code that passes decoded text between them is exercised for real.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    GenerationConfig,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    PreTrainedTokenizerFast,
    set_seed,
)
from trl import RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

if TYPE_CHECKING:
    from superhf_lab.tiny_world.recipe import TinyWorldRecipe

POLICY_END_OF_TEXT = "<|endoftext|>"  # Pythia's bos = eos = unk token
POLICY_PADDING = "<|padding|>"  # Pythia's vocabulary has this too; distinct from EOS so EOS is never masked out
REWARD_SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")


def _padded_vocab_size(size: int, multiple: int = 64) -> int:
    return -(-size // multiple) * multiple


def train_policy_tokenizer(texts: Iterable[str], recipe: TinyWorldRecipe) -> PreTrainedTokenizerFast:
    """A GPT-NeoX-like byte-level BPE learned on the synthetic dialogues."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=recipe.policy_vocab_size,
        special_tokens=[POLICY_END_OF_TEXT, POLICY_PADDING],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=POLICY_END_OF_TEXT,
        eos_token=POLICY_END_OF_TEXT,
        unk_token=POLICY_END_OF_TEXT,
        pad_token=POLICY_PADDING,
        model_max_length=recipe.policy_max_positions,
        clean_up_tokenization_spaces=False,
    )


def learn_wordpiece_vocabulary(texts: Iterable[str], size: int, normalizer, pre_tokenizer) -> dict[str, int]:
    """WordPiece's vocabulary as tokenizers' WordPieceTrainer learns it (BPE over words split into a first character
    and ``##``-marked continuations, until ``size`` pieces), with every tie broken by the pieces' text.

    The trainer itself is not reproducible: it keeps pieces in hash maps, so which pieces it learns, and their ids,
    change from process to process (huggingface/tokenizers#1794). Here words are counted, merged and numbered in
    sorted order, so the same texts give the same vocabulary on every run and machine.
    """
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    words = [([word[0], *(f"##{c}" for c in word[1:])], count) for word, count in sorted(counts.items())]
    pieces = list(REWARD_SPECIAL_TOKENS) + sorted({piece for symbols, _ in words for piece in symbols})
    known = set(pieces)
    while len(pieces) < size:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in words:
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        (left, right), _ = min(pairs.items(), key=lambda item: (-item[1], item[0]))
        merged = left + right.removeprefix("##")
        for symbols, _ in words:
            i = 0
            while i < len(symbols) - 1:
                if symbols[i] == left and symbols[i + 1] == right:
                    symbols[i : i + 2] = [merged]
                i += 1
        if merged not in known:
            known.add(merged)
            pieces.append(merged)
    return {piece: index for index, piece in enumerate(pieces)}


def train_reward_tokenizer(texts: Iterable[str], recipe: TinyWorldRecipe) -> PreTrainedTokenizerFast:
    """A BERT-style lower-cased WordPiece that wraps every text as ``[CLS] text [SEP]``."""
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vocabulary = learn_wordpiece_vocabulary(texts, recipe.reward_vocab_size, normalizer, pre_tokenizer)
    tokenizer = Tokenizer(models.WordPiece(vocabulary, unk_token="[UNK]"))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, pre_tokenizer
    tokenizer.decoder = decoders.WordPiece()
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        bos_token="[CLS]",  # as DeBERTa-v3's tokenizer
        eos_token="[SEP]",
        model_max_length=recipe.reward_max_positions,
    )


def _trainer_defaults(output_dir: Path, recipe: TinyWorldRecipe) -> dict:
    """Arguments shared by both trainers: no checkpoints, no trackers, no hub; device left to the trainer."""
    return {
        "output_dir": str(output_dir),
        "report_to": "none",
        "save_strategy": "no",
        "push_to_hub": False,
        "seed": recipe.seed,
        "data_seed": recipe.seed,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05,
        "weight_decay": 0.01,
        "logging_steps": 20,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        # TRL defaults to bf16 and gradient checkpointing, which buy nothing for models this small
        # and fail on CPUs without bf16 support.
        "bf16": False,
        "gradient_checkpointing": False,
    }


def train_policy(
    sft_examples: list[dict[str, str]], tokenizer: PreTrainedTokenizerFast, recipe: TinyWorldRecipe, work_dir: Path
) -> tuple[GPTNeoXForCausalLM, float]:
    """A freshly initialised GPT-NeoX fine-tuned on prompt/completion dialogues; returns (model, final loss).

    SFTTrainer appends EOS to each completion and computes the loss on completion tokens only,
    so the policy learns to answer and then stop.
    """
    set_seed(recipe.seed)
    config = GPTNeoXConfig(
        vocab_size=_padded_vocab_size(len(tokenizer)),
        hidden_size=recipe.policy_hidden_size,
        num_hidden_layers=recipe.policy_layers,
        num_attention_heads=recipe.policy_heads,
        intermediate_size=4 * recipe.policy_hidden_size,
        max_position_embeddings=recipe.policy_max_positions,
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPTNeoXForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    args = SFTConfig(
        **_trainer_defaults(work_dir / "sft", recipe),
        num_train_epochs=recipe.sft_epochs,
        per_device_train_batch_size=recipe.sft_batch_size,
        learning_rate=recipe.sft_learning_rate,
        max_length=recipe.policy_max_positions,
        completion_only_loss=True,
        packing=False,
        train_sampling_strategy="group_by_length",  # batches of similar length waste less compute on padding
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(sft_examples), processing_class=tokenizer
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return model.eval(), float(losses[-1])


def train_reward_model(
    pairs: list[dict[str, str]], tokenizer: PreTrainedTokenizerFast, recipe: TinyWorldRecipe, work_dir: Path
) -> DebertaV2ForSequenceClassification:
    """A freshly initialised DeBERTa-v2 with one score output, trained on preference pairs.

    Pairs are tokenised here exactly as the project scores text later (``tokenizer(prompt +
    completion)``, i.e. ``[CLS] text [SEP]``), rather than letting RewardTrainer append its own EOS.
    """
    set_seed(recipe.seed)
    config = DebertaV2Config(
        vocab_size=_padded_vocab_size(len(tokenizer)),
        hidden_size=recipe.reward_hidden_size,
        num_hidden_layers=recipe.reward_layers,
        num_attention_heads=recipe.reward_heads,
        intermediate_size=4 * recipe.reward_hidden_size,
        max_position_embeddings=recipe.reward_max_positions,
        relative_attention=True,
        position_buckets=64,
        max_relative_positions=-1,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        type_vocab_size=0,
        pooler_hidden_size=recipe.reward_hidden_size,
        pooler_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        num_labels=1,
    )
    model = DebertaV2ForSequenceClassification(config)

    def tokenized(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        return {
            "chosen_ids": tokenizer(batch["chosen"], truncation=True)["input_ids"],
            "rejected_ids": tokenizer(batch["rejected"], truncation=True)["input_ids"],
        }

    dataset = Dataset.from_list(pairs).map(tokenized, batched=True, remove_columns=["chosen", "rejected"])
    args = RewardConfig(
        **_trainer_defaults(work_dir / "reward_model", recipe),
        num_train_epochs=recipe.reward_epochs,
        per_device_train_batch_size=recipe.reward_batch_size,
        learning_rate=recipe.reward_learning_rate,
        max_length=recipe.reward_max_positions,
        center_rewards_coefficient=0.01,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    return model.eval()
