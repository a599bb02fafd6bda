"""Tiny, real Trainer runs of each failure class, built from a config in seconds on a CPU.

The tests, the benchmarks and the notebook all need runs that really fail the way users' runs fail, not synthetic
curves: a causal LM built from a config (no download) learns a small, learnable task (arithmetic progressions
modulo the vocabulary), and each scenario changes only what a user would get wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

VOCAB_SIZE = 64
SEQ_LEN = 24


class Progressions(Dataset):
    """Sequences ``start, start+k, start+2k, ...`` modulo the vocabulary: easy to learn, impossible to guess.

    ``masked_fraction`` of the examples (all of them at 1.0) have every label -100, as a prompt-masking bug or a
    response truncated away leaves them.
    """

    def __init__(self, size: int, seed: int = 0, masked_fraction: float = 0.0) -> None:
        generator = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB_SIZE, (size, 1), generator=generator)
        stride = torch.randint(1, 5, (size, 1), generator=generator)
        self.input_ids = (start + stride * torch.arange(SEQ_LEN)) % VOCAB_SIZE
        self.masked = torch.rand(size, generator=generator) < masked_fraction

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        labels = torch.full_like(self.input_ids[i], -100) if self.masked[i] else self.input_ids[i].clone()
        return {"input_ids": self.input_ids[i], "labels": labels}


def token_mean_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """A masked mean over target tokens as users write it: on a batch without one, 0/0 makes the loss and every
    gradient NaN, and the optimizer writes NaN into the weights."""
    logits = outputs.logits[:, :-1].flatten(0, 1).float()
    targets = labels[:, 1:].flatten()
    mask = (targets != -100).float()
    losses = torch.nn.functional.cross_entropy(logits, targets.clamp(min=0), reduction="none")
    return (losses * mask).sum() / mask.sum()


def tiny_model(
    arch: str = "llama", seed: int = 0, *, vocab_size: int = VOCAB_SIZE, **special_tokens: int
) -> PreTrainedModel:
    """A two-layer causal LM of width 32, randomly initialised from ``seed``: a 64-token vocabulary by default, or a
    tokenizer's ``vocab_size`` and ``special_tokens`` (``pad_token_id``, ...) for TRL's trainers."""
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, **special_tokens,
        )
        return LlamaForCausalLM(config)
    if arch == "gpt2":
        return GPT2LMHeadModel(GPT2Config(
            vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64,
            **{"bos_token_id": 0, "eos_token_id": 0, **special_tokens},
        ))
    raise ValueError(f"unknown arch {arch!r}: llama or gpt2")


def pretrain(model: PreTrainedModel, steps: int, seed: int = 0, *, learning_rate: float = 3e-3) -> PreTrainedModel:
    """Train ``model`` in place for ``steps`` AdamW steps of 8 progressions (other ones than any run's data)."""
    data = Progressions(512, seed=seed + 2000)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    for _ in range(steps):
        ids = data.input_ids[torch.randint(0, len(data), (8,), generator=generator)]
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


def _zero_scaled_lora(model: PreTrainedModel) -> PreTrainedModel:
    """LoRA adapters with ``lora_alpha=0``: their output is scaled by alpha/r = 0, so no gradient ever reaches them.

    A real misconfiguration with the same signature as every broken backward path (grad norm exactly 0.0).
    """
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "v_proj"] if model.config.model_type == "llama" else ["c_attn"]
    return get_peft_model(model, LoraConfig(r=8, lora_alpha=0, target_modules=targets, task_type="CAUSAL_LM"))


@dataclass(frozen=True)
class Scenario:
    """What a user set (or got wrong), and the diagnosis trainwatch must give."""

    expected: tuple[str, str | None]
    """(kind, cause); kind "healthy" and cause None for runs that must not be flagged."""
    args: Mapping[str, Any] = field(default_factory=dict)
    train_size: int = 512
    masked_fraction: float = 0.0
    zero_lora_scale: bool = False
    custom_loss: bool = False
    """Train with :func:`token_mean_loss` instead of the model's own loss."""
    pretrain_steps: int = 0
    """Optimizer steps the model is first trained for (:func:`pretrain`), so the run fine-tunes a base that already
    knows part of the task, as a user's pretrained model does: its loss per batch then depends on which examples the
    batch holds, so a small batch's loss is noisy (a model that knows nothing scores every batch ln V)."""


SCENARIOS: dict[str, Scenario] = {
    "healthy": Scenario(("healthy", None), {"learning_rate": 3e-3, "max_steps": 150, "eval_steps": 25}),
    "healthy_warmup": Scenario(
        ("healthy", None), {"learning_rate": 3e-3, "max_steps": 200, "warmup_steps": 120, "eval_steps": 50}
    ),
    "healthy_noisy": Scenario(
        ("healthy", None), {"learning_rate": 1e-3, "max_steps": 200, "per_device_train_batch_size": 2, "eval_steps": 50}
    ),
    "exploding": Scenario(("exploding", "lr_too_high"), {"learning_rate": 1.0, "max_grad_norm": 0.0, "max_steps": 150}),
    "lr_too_low": Scenario(("flat", "lr_too_low"), {"learning_rate": 1e-7, "max_steps": 150}),
    "non_finite": Scenario(
        ("exploding", "non_finite"),
        {"learning_rate": 1e-3, "max_steps": 150, "per_device_train_batch_size": 1},
        masked_fraction=0.03,
        custom_loss=True,
    ),
    "no_target_tokens": Scenario(("flat", "no_target_tokens"), {"learning_rate": 1e-3, "max_steps": 150}, masked_fraction=1.0),
    "zero_gradients": Scenario(("flat", "zero_gradients"), {"learning_rate": 1e-3, "max_steps": 150}, zero_lora_scale=True),
    "overfitting": Scenario(
        ("overfitting", None), {"learning_rate": 5e-3, "num_train_epochs": 200, "eval_steps": 10}, train_size=8
    ),
    # Harder, as real curves are: the damage done before anything is logged, a noisy flat loss, a small overfit.
    "exploded_before_first_log": Scenario(
        # By the first log (the mean of steps 1-5) the loss is 10-25x a uniform guess ln 64; it falls back towards
        # ln 64 as the rate decays but never below it: nothing was ever learned.
        ("exploding", "lr_too_high"), {"learning_rate": 2.0, "max_grad_norm": 0.0, "max_steps": 80, "logging_steps": 5}
    ),
    "lr_too_low_noisy": Scenario(
        # A base that knows part of the task, fine-tuned at batch size 2: the loss swings 5-10 % from step to step
        # around a level that does not move (its eval loss by well under 1 % in 300 steps).
        ("flat", "lr_too_low"),
        {"learning_rate": 1e-6, "max_steps": 300, "per_device_train_batch_size": 2, "eval_steps": 50},
        pretrain_steps=75,
    ),
    "healthy_slow": Scenario(
        # lr_too_low_noisy's run at a learning rate that works, slowly (gpt2) and as noisily: over the run the train
        # loss falls 13-14 % (gpt2, 2-5 % per 50 steps) to 61-65 % (llama), the eval loss 10-11 % to 53-55 %. (At
        # 5e-4 gpt2's fell 8-10 %: "very slowly declining", flat as the labelled real runs read it.)
        ("healthy", None),
        {"learning_rate": 1e-3, "max_steps": 300, "per_device_train_batch_size": 2, "eval_steps": 50},
        pretrain_steps=75,
    ),
    "overfitting_small": Scenario(
        # 32 examples at a constant rate: past its best (step 180 for llama, 200-340 for gpt2) the eval loss rises,
        # by 1-1.5 % at the first evaluation, at every evaluation for llama and in a jagged climb for gpt2, while
        # the train loss keeps falling; the eval loss stays under 1.0 (llama) or the train loss above 0.1 (gpt2)
        # while it does: a widening gap, not yet memorization. 500 steps, so that gpt2's later best is followed by
        # enough evaluations.
        ("overfitting", "widening_gap"),
        {"learning_rate": 2e-3, "max_steps": 500, "eval_steps": 20, "lr_scheduler_type": "constant"},
        train_size=32,
    ),
}


def tiny_trainer(
    scenario: str,
    output_dir: str,
    *,
    callbacks: Iterable[TrainerCallback] = (),
    seed: int = 0,
    arch: str = "llama",
    **overrides: Any,
) -> Trainer:
    """A ready-to-train Trainer for ``scenario``; ``overrides`` are TrainingArguments fields."""
    spec = SCENARIOS[scenario]
    model = tiny_model(arch, seed)
    if spec.pretrain_steps:
        pretrain(model, spec.pretrain_steps, seed)
    if spec.zero_lora_scale:
        model = _zero_scaled_lora(model)
    settings: dict[str, Any] = {
        "per_device_train_batch_size": 8,
        "logging_steps": 1,
        "report_to": ["tensorboard"],
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": seed,
        "data_seed": seed,
        **spec.args,
        **overrides,
    }
    settings.setdefault("eval_strategy", "steps" if settings.get("eval_steps") else "no")
    if "num_train_epochs" not in settings:
        settings["num_train_epochs"] = 1
    args = TrainingArguments(output_dir=output_dir, **settings)
    return Trainer(
        model=model,
        args=args,
        train_dataset=Progressions(spec.train_size, seed=seed, masked_fraction=spec.masked_fraction),
        eval_dataset=Progressions(64, seed=seed + 1000) if args.eval_strategy != "no" else None,
        callbacks=list(callbacks),
        compute_loss_func=token_mean_loss if spec.custom_loss else None,
    )


# -- TRL runs: a preference objective (DPO) and an RL objective (GRPO) --------------------------------------------
# The shipped tiny model's character tokenizer (vocab 100) and a two-layer model of width 32 built from a config: TRL's
# trainers need a tokenizer to build their batches. The task is letter progressions ("aceg..."): the prompt is the
# first letters, the completion the rest.
TINY_LLAMA = Path(__file__).resolve().parent / "assets" / "tiny-llama"
LETTERS = "abcdefghijklmnopqrstuvwxyz"
PROMPT_LETTERS = 5


def letter_progressions(n: int, seed: int, length: int = 16) -> tuple[list[str], list[str]]:
    """``n`` letter progressions (start, stride 1-3, modulo 26) and ``n`` random letter strings of the same length."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, 26, (n,), generator=generator).tolist()
    strides = torch.randint(1, 4, (n,), generator=generator).tolist()
    noise = torch.randint(0, 26, (n, length), generator=generator).tolist()
    good = ["".join(LETTERS[(s + k * i) % 26] for i in range(length)) for s, k in zip(starts, strides)]
    return good, ["".join(LETTERS[c] for c in row) for row in noise]


def preference_pairs(n: int, seed: int) -> Any:
    """DPO records: the rejected completion is the chosen one with its middle letter wrong, a preference learned
    slowly, and only by a model that keeps what it learned."""
    import datasets

    good, noise = letter_progressions(n, seed)
    rows = []
    for g, b in zip(good, noise):
        chosen = g[PROMPT_LETTERS:]
        i = len(chosen) // 2
        wrong = b[i] if b[i] != chosen[i] else LETTERS[(LETTERS.index(chosen[i]) + 1) % 26]
        rows.append({"prompt": g[:PROMPT_LETTERS], "chosen": chosen, "rejected": chosen[:i] + wrong + chosen[i + 1 :]})
    return datasets.Dataset.from_list(rows)


def letter_prompts(n: int, seed: int) -> Any:
    import datasets

    good, _ = letter_progressions(n, seed)
    return datasets.Dataset.from_list([{"prompt": g[:PROMPT_LETTERS]} for g in good])


def vowel_share(completions: list[str], **kwargs: Any) -> list[float]:
    """A reward that differs between a prompt's completions: GRPO has an advantage to learn from."""
    return [sum(c in "aeiou" for c in completion) / max(len(completion), 1) for completion in completions]


def same_reward(completions: list[str], **kwargs: Any) -> list[float]:
    """Every completion rewarded alike, as a reward function that is too strict (or too easy) is: every group's
    rewards are identical, every advantage is 0, and GRPO has nothing to learn from."""
    return [1.0 for _ in completions]


@dataclass(frozen=True)
class TrlScenario:
    """A TRL run: its trainer (``"dpo"`` or ``"grpo"``), what a user set (or got wrong), and the diagnosis."""

    trainer: str
    expected: tuple[str, str | None]
    args: Mapping[str, Any] = field(default_factory=dict)
    reward: Callable[..., list[float]] | None = None
    """GRPO's reward function."""


_GRPO = {
    "learning_rate": 1e-3,
    "max_steps": 15,
    "num_generations": 4,
    "max_completion_length": 8,
    "per_device_train_batch_size": 8,
}
"""2 prompts × 4 completions of up to 8 tokens a step, TRL's default ``beta`` 0 (no reference model)."""
TRL_SCENARIOS: dict[str, TrlScenario] = {
    "dpo_healthy": TrlScenario(
        # 5e-3, not 1e-2: at 1e-2 one of the six (gpt2, seed 0, one thread) never learns (eval reward accuracy 0.58
        # at step 60), and that run is flat, not healthy
        "dpo",
        ("healthy", None),
        {"learning_rate": 5e-3, "max_steps": 60, "eval_steps": 10},
    ),
    "dpo_diverged": TrlScenario(
        # Unclipped at a constant 0.5 the loss swings far above ln 2 and the eval reward accuracy stays near a coin
        # toss, where the healthy run's nears 1.
        "dpo",
        ("exploding", "lr_too_high"),
        {
            "learning_rate": 0.5,
            "max_grad_norm": 0.0,
            "lr_scheduler_type": "constant",
            "max_steps": 60,
            "eval_steps": 10,
        },
    ),
    "dpo_flat": TrlScenario(
        # TRL's default learning rate for DPO (1e-6) on a full fine-tune this small: the loss stays at ln 2 to the
        # fourth decimal.
        "dpo",
        ("flat", "lr_too_low"),
        {"learning_rate": 1e-6, "max_steps": 60, "eval_steps": 10},
    ),
    "grpo_healthy": TrlScenario("grpo", ("healthy", None), _GRPO, reward=vowel_share),
    "grpo_no_signal": TrlScenario("grpo", ("flat", "no_reward_signal"), _GRPO, reward=same_reward),
}


TRL_CPU_ARGS: dict[str, Any] = {
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 64,
    "logging_steps": 1,
    "report_to": ["tensorboard"],
    "save_strategy": "no",
    "use_cpu": True,
    "disable_tqdm": True,
    "bf16": False,  # TRL's configs default to bf16 mixed precision, slow on most CPUs
    "activation_checkpointing": False,  # ... and to gradient (activation) checkpointing
}
"""The config fields every tiny TRL run on a CPU sets: TRL's defaults are made for a GPU."""


def tiny_trl_trainer(
    scenario: str,
    output_dir: str,
    *,
    callbacks: Iterable[TrainerCallback] = (),
    seed: int = 0,
    arch: str = "llama",
    **overrides: Any,
) -> Trainer:
    """A ready-to-train ``DPOTrainer`` or ``GRPOTrainer`` for ``scenario`` (needs ``trl``); ``overrides`` are config
    fields. DPO runs are full fine-tunes, their reference a copy of the model."""
    import copy

    import trl
    from transformers import AutoTokenizer

    spec = TRL_SCENARIOS[scenario]
    tokenizer = AutoTokenizer.from_pretrained(TINY_LLAMA)
    model = tiny_model(arch, seed, vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1, bos_token_id=1)
    settings: dict[str, Any] = {**TRL_CPU_ARGS, "seed": seed, "data_seed": seed, **spec.args, **overrides}
    settings.setdefault("eval_strategy", "steps" if settings.get("eval_steps") else "no")
    evaluate = settings["eval_strategy"] != "no"
    if spec.trainer == "dpo":
        return trl.DPOTrainer(
            model=model,
            ref_model=copy.deepcopy(model),
            args=trl.DPOConfig(output_dir=output_dir, max_length=32, **settings),
            processing_class=tokenizer,
            train_dataset=preference_pairs(512, seed),
            eval_dataset=preference_pairs(64, seed + 1) if evaluate else None,
            callbacks=list(callbacks),
        )
    if spec.trainer == "grpo":
        return trl.GRPOTrainer(
            model=model,
            reward_funcs=spec.reward,
            args=trl.GRPOConfig(output_dir=output_dir, **settings),
            processing_class=tokenizer,
            train_dataset=letter_prompts(256, seed),
            eval_dataset=letter_prompts(16, seed + 1) if evaluate else None,
            callbacks=list(callbacks),
        )
    raise ValueError(f"unknown trainer {spec.trainer!r}: dpo or grpo")
