"""Real TRL runs: SFTTrainer, DPOTrainer, GRPOTrainer and RewardTrainer with the live Diagnoser attached, and
``trainwatch analyze`` on each output directory giving the same verdict.

Every run is tiny and fast on a CPU: one two-layer llama built from the shipped tiny model's config (vocab 100, the
shipped character-level tokenizer), saved once, trained for 15-60 steps on a learnable task (letter progressions:
``aceg...``) and logged every step. Each case changes only what a user would get wrong. The TRL keys the engine
reads are checked too, so that a TRL release renaming them fails here first.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

trl = pytest.importorskip(
    "trl", minversion="1.16", reason="the TRL integration tests need trl>=1.16 (pip install -e '.[trl]')"
)

import datasets  # noqa: E402 - TRL's own dependency, present whenever trl is
import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from trainwatch import Diagnoser  # noqa: E402
# the letter progressions and rewards the detection benchmark's TRL runs use too
from trainwatch.testing import LETTERS, TRL_CPU_ARGS, vowel_share
from trainwatch.testing import PROMPT_LETTERS as PROMPT  # the rest of a progression is the completion
from trainwatch.testing import letter_progressions as progressions
from trainwatch.testing import letter_prompts as prompts
from trainwatch.testing import preference_pairs as preferences
from trainwatch.testing import same_reward as always_one

ASSET = Path(__file__).resolve().parents[1] / "trainwatch" / "assets" / "tiny-llama"
CHAT_TEMPLATE = (
    "{%- for m in messages %}{%- if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + eos_token }}"
    "{% endgeneration %}{%- else %}{{ m['content'] + '\\n' }}{%- endif %}{%- endfor %}"
)
"""The shipped tokenizer has no chat template; this one marks the assistant's turn for ``assistant_only_loss``."""


# -- data: letter progressions ----------------------------------------------------------------------------------
def prompt_completion(n: int, seed: int) -> datasets.Dataset:
    good, _ = progressions(n, seed)
    return datasets.Dataset.from_list([{"prompt": g[:PROMPT], "completion": g[PROMPT:]} for g in good])


def text(n: int, seed: int) -> datasets.Dataset:
    good, _ = progressions(n, seed)
    return datasets.Dataset.from_list([{"text": g} for g in good])


def messages(n: int, seed: int) -> datasets.Dataset:
    good, _ = progressions(n, seed)
    turns = [[{"role": "user", "content": g[:PROMPT]}, {"role": "assistant", "content": g[PROMPT:]}] for g in good]
    return datasets.Dataset.from_list([{"messages": m} for m in turns])


def letters_or_digits(n: int, seed: int) -> datasets.Dataset:
    """Chosen: a progression's continuation; rejected: digits. A reward model separates them in a few steps."""
    good, noise = progressions(n, seed)
    digits = ["".join(str(LETTERS.index(c) % 10) for c in b[PROMPT:]) for b in noise]
    return datasets.Dataset.from_list(
        [{"prompt": g[:PROMPT], "chosen": g[PROMPT:], "rejected": d} for g, d in zip(good, digits)]
    )


# -- the cases ----------------------------------------------------------------------------------------------------
SFT = ("SFTTrainer", "SFTConfig")
DPO = ("DPOTrainer", "DPOConfig")
GRPO = ("GRPOTrainer", "GRPOConfig")
REWARD = ("RewardTrainer", "RewardConfig")
EVERY_10 = {"eval_strategy": "steps", "eval_steps": 10}


@dataclass(frozen=True)
class Case:
    trainer: tuple[str, str]
    """(trainer class, its TrainingArguments subclass), both in ``trl``."""
    expected: tuple[str, frozenset[str | None]]
    """(kind, the causes accepted); healthy: ("healthy", {None})."""
    train: Callable[[int, int], datasets.Dataset]
    config: dict[str, Any] = field(default_factory=dict)
    eval: bool = True
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)


def expect(kind: str, *causes: str | None) -> tuple[str, frozenset[str | None]]:
    return kind, frozenset(causes or (None,))


CASES: dict[str, Case] = {
    # SFT on prompt/completion records: the loss on the completion only (TRL's default for that format).
    "sft_healthy": Case(
        SFT, expect("healthy"), prompt_completion, {"learning_rate": 1e-2, "max_steps": 60, **EVERY_10}
    ),
    "sft_exploding": Case(
        SFT, expect("exploding", "lr_too_high", "non_finite"), prompt_completion,
        {"learning_rate": 1.0, "max_grad_norm": 0.0, "max_steps": 60, **EVERY_10},
    ),
    "sft_flat": Case(
        SFT, expect("flat", "lr_too_low"), prompt_completion, {"learning_rate": 1e-7, "max_steps": 60, **EVERY_10}
    ),
    "sft_packing": Case(
        SFT, expect("healthy"), text,
        {"learning_rate": 1e-2, "max_steps": 30, "packing": True, "max_length": 64, "per_device_train_batch_size": 4,
         **EVERY_10},
    ),
    "sft_assistant_only": Case(
        SFT, expect("healthy"), messages, {"learning_rate": 1e-2, "max_steps": 30, "assistant_only_loss": True},
        eval=False,
    ),
    # DPO, full model (the reference is loaded from the same directory): loss starts at ln 2.
    "dpo_healthy": Case(DPO, expect("healthy"), preferences, {"learning_rate": 1e-2, "max_steps": 60, **EVERY_10}),
    "dpo_diverged": Case(
        # Unclipped at a constant 0.5 the loss swings 0.1-3.4 around ~1.0 (above ln 2) and the eval reward accuracy
        # stays 0.47-0.73, where the healthy run's reaches 0.97.
        DPO, expect("exploding", "lr_too_high"), preferences,
        {"learning_rate": 0.5, "max_grad_norm": 0.0, "lr_scheduler_type": "constant", "max_steps": 60, **EVERY_10},
    ),
    "dpo_flat": Case(
        DPO, expect("flat", "lr_too_low"), preferences, {"learning_rate": 1e-6, "max_steps": 60, **EVERY_10}
    ),
    # GRPO: 2 prompts x 4 completions of up to 8 tokens per step; beta > 0 so that TRL computes and logs the KL.
    "grpo_healthy": Case(
        GRPO, expect("healthy"), prompts,
        {"learning_rate": 1e-3, "max_steps": 15, "num_generations": 4, "max_completion_length": 8, "beta": 0.04},
        eval=False, trainer_kwargs={"reward_funcs": vowel_share},
    ),
    "grpo_no_signal": Case(
        GRPO, expect("flat", "no_reward_signal"), prompts,
        {"learning_rate": 1e-3, "max_steps": 15, "num_generations": 4, "max_completion_length": 8, "beta": 0.04},
        eval=False, trainer_kwargs={"reward_funcs": always_one},
    ),
    "reward_healthy": Case(
        REWARD, expect("healthy"), letters_or_digits, {"learning_rate": 1e-3, "max_steps": 40, **EVERY_10}
    ),
}

DEFAULTS: dict[str, Any] = {**TRL_CPU_ARGS, "max_length": 32, "seed": 0, "data_seed": 0}


@dataclass
class Run:
    output_dir: Path
    diagnoser: Diagnoser
    args_type: str
    log_history: list[dict[str, Any]]


# -- running them -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train several times faster on one thread than on two cores shared with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    datasets.disable_progress_bars()
    yield
    torch.set_num_threads(threads)
    datasets.enable_progress_bars()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The shipped tiny llama's config, shrunk to 2 layers of width 32 and randomly initialised, saved with the
    shipped tokenizer (and a chat template): a model directory every TRL trainer can load, reference models
    included."""
    path = tmp_path_factory.mktemp("tiny-llama")
    config = AutoConfig.from_pretrained(
        ASSET, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(ASSET)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return path


def train(case: Case, base: Path, output_dir: Path) -> Run:
    trainer_class, config_class = getattr(trl, case.trainer[0]), getattr(trl, case.trainer[1])
    settings = {**DEFAULTS, **case.config}
    if not case.eval:
        settings.pop("per_device_eval_batch_size")
    if trainer_class is trl.GRPOTrainer:
        settings.pop("max_length")
    diagnoser = Diagnoser(report=False)  # no diagnosis.json: `trainwatch analyze` must judge the logs alone
    trainer = trainer_class(
        model=str(base),
        args=config_class(output_dir=str(output_dir), **settings),
        processing_class=AutoTokenizer.from_pretrained(base),
        train_dataset=case.train(256 if trainer_class is trl.GRPOTrainer else 512, 0),
        eval_dataset=case.train(64, 1) if case.eval else None,
        callbacks=[diagnoser],
        **case.trainer_kwargs,
    )
    logging.disable(logging.WARNING)
    try:
        trainer.train()
    finally:
        logging.disable(logging.NOTSET)
    trainer.save_state()  # trainer_state.json beside the event files, as a run's checkpoints have it
    trainer.save_model()  # config.json: the vocabulary size for `trainwatch analyze`, as the live side has it
    return Run(output_dir, diagnoser, type(trainer.args).__name__, trainer.state.log_history)


@pytest.fixture(scope="module")
def runs(base, tmp_path_factory) -> Callable[[str], Run]:
    """Each case trained once, when a test first asks for it."""
    done: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in done:
            done[name] = train(CASES[name], base, tmp_path_factory.mktemp(name))
        return done[name]

    return get


def first(findings: list[Any]) -> tuple[str, str | None, int | None]:
    return (findings[0].kind, findings[0].cause, findings[0].step) if findings else ("healthy", None, None)


def series(run: Run) -> str:
    """The logged series, for a failure message: what the rules saw."""
    keys = ("loss", "grad_norm", "learning_rate", "eval_loss")
    lines = [f"{key}: {[round(e[key], 4) for e in run.log_history if key in e]}" for key in keys]
    return "\n".join(lines)


# -- the tests ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_live_verdict(runs, name):
    run = runs(name)
    kind, causes = CASES[name].expected
    assert not run.diagnoser.disabled, "the Diagnoser switched itself off on an internal error"
    assert run.args_type == CASES[name].trainer[1]
    decided = first(run.diagnoser.diagnoses)
    assert run.diagnoser.verdict == kind and decided[1] in causes, f"{name}: decided {decided}\n{series(run)}"


@pytest.mark.parametrize("source", ["output_dir", "trainer_state.json"])
@pytest.mark.parametrize("name", list(CASES))
def test_analyze_gives_the_live_verdict(runs, name, source):
    """The output dir is read from its TensorBoard run (its ``args`` summary and the dir's config.json beside it);
    trainer_state.json alone holds every logged key, TRL's included."""
    run = runs(name)
    path = run.output_dir if source == "output_dir" else run.output_dir / source
    result = subprocess.run(
        [sys.executable, "-m", "trainwatch", "analyze", str(path), "--json"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode in (0, 1), result.stderr
    (report,) = map(json.loads, result.stdout.splitlines())  # JSON Lines: one object per run
    diagnoses = report["diagnoses"]
    top = diagnoses[0] if diagnoses else {"kind": "healthy", "cause": None, "step": None}
    posthoc = (top["kind"], top["cause"], top["step"])
    assert (report["verdict"], posthoc) == (run.diagnoser.verdict, first(run.diagnoser.diagnoses)), report["notes"]


KEYS = {
    # what a TRL release must keep logging for trainwatch to tell the objective and judge it
    "sft_healthy": {"loss", "grad_norm", "learning_rate", "entropy", "mean_token_accuracy", "num_tokens"},
    "dpo_healthy": {
        "loss", "grad_norm", "learning_rate", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
        "rewards/margins", "logps/chosen", "logps/rejected",
    },
    "grpo_healthy": {"loss", "grad_norm", "learning_rate", "reward", "reward_std", "frac_reward_zero_std", "kl"},
    "reward_healthy": {"loss", "grad_norm", "learning_rate", "accuracy", "margin", "mean_reward"},
}


@pytest.mark.parametrize("name", list(KEYS))
def test_trl_logs_the_keys_trainwatch_reads(runs, name):
    run = runs(name)
    train_entry = run.log_history[0]
    assert KEYS[name] <= train_entry.keys(), sorted(train_entry)
    if CASES[name].eval:
        evals = [e for e in run.log_history if "eval_loss" in e]
        expected = {f"eval_{k}" for k in KEYS[name] - {"grad_norm", "learning_rate"}}
        assert evals and expected <= evals[0].keys(), sorted(evals[0])


def test_dpo_starts_at_ln_2_and_grpo_without_signal_logs_zeros(runs):
    assert runs("dpo_flat").log_history[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)
    no_signal = [e for e in runs("grpo_no_signal").log_history if "loss" in e]
    assert all(e["loss"] == 0.0 and e["grad_norm"] == 0.0 and e["frac_reward_zero_std"] == 1.0 for e in no_signal)
    assert all(e["reward_std"] == 0.0 for e in no_signal)


def test_sft_without_a_single_target_token_fails_before_any_callback(base, tmp_path):
    """Prompts longer than ``max_length``: every completion is truncated away, SFTTrainer drops every example (it
    drops those without a target token when ``max_length`` is set), and Trainer fails building the dataloader,
    before ``on_train_begin``: the Diagnoser never sees the run. ``trainwatch check`` on the data is the place."""
    good, _ = progressions(16, 0, length=40)
    data = datasets.Dataset.from_list([{"prompt": g, "completion": "xyz"} for g in good])
    diagnoser = Diagnoser(report=False)
    trainer = trl.SFTTrainer(
        model=str(base),
        args=trl.SFTConfig(output_dir=str(tmp_path), **{**DEFAULTS, "max_steps": 5}),
        processing_class=AutoTokenizer.from_pretrained(base),
        train_dataset=data,
        callbacks=[diagnoser],
    )
    assert len(trainer.train_dataset) == 0
    with pytest.raises(ValueError, match="num_samples"):
        trainer.train()
    assert diagnoser.diagnoses == [] and diagnoser.checks == []
