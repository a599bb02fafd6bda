"""The reference QLoRA run, with trainwatch's Diagnoser attached: ``python -m trainwatch.train``.

With no flags it fine-tunes the tiny pretrained model shipped in ``trainwatch/assets`` on a small instruction set, on
whatever hardware there is, offline, in a few minutes on a laptop CPU. Point ``--model`` at a hub id or a local
checkpoint and ``--data`` at your JSONL to run the same textbook configuration on your own model and data.

Read top to bottom: configuration (the lesson's defaults) → parse → data → model → trainer → train → report.
``--scenario`` reproduces each failure class by changing only what a user would get wrong; ``--sweep`` runs the
lesson's learning-rate × LoRA-rank grid search, each trial watched (and stopped early when it fails); ``--repair``
goes back to the last good checkpoint of a failed run and trains on with the first fix applied
(:func:`trainwatch.repair.train_with_repair`, the same entry point as for your own Trainer).

Exit status: 0 healthy (with ``--repair``: or repaired), 1 the Diagnoser found a failure (with ``--repair``: one
remains after ``--max_repairs`` attempts), 2 a usage or data error, 4 (``--repair``) a failure no argument change can
repair (no target tokens, zero gradients, frozen layers).
"""

from __future__ import annotations

import argparse
import copy
import csv
import itertools
import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    DataCollatorForSeq2Seq,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
)
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType
from transformers.training_args import OptimizerNames

from trainwatch.callbacks import Diagnoser
from trainwatch.data import DataError, InstructionDataset, load_examples
from trainwatch.findings import HEALTHY, KINDS
from trainwatch.repair import RepairResult, train_with_repair
from trainwatch.report import format_report, write_json_atomic

ASSETS = Path(__file__).resolve().parent / "assets"
SCENARIOS = ("exploding", "flat", "overfitting")
USAGE_ERROR = 2
"""Exit status of a wrong flag or a bad data file (argparse's); a finished run exits 0, or 1 when diagnosed."""


# -- configuration: the lesson's defaults ---------------------------------------------------------------------------
def _bf16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _lesson(default: Any, why: str) -> Any:
    return field(default=default, metadata={"help": f"{why} (default: {default})"})


@dataclass
class QLoRATrainingArguments(TrainingArguments):
    """TrainingArguments with the QLoRA lesson's values as defaults; every field is still a flag."""

    _argument_group_name = "training: every transformers.TrainingArguments field (defaults: the QLoRA lesson's)"

    output_dir: str | None = _lesson("trainwatch-reference-run", "where checkpoints, TensorBoard logs and the report go")
    learning_rate: float = _lesson(2e-4, "peak learning rate")
    lr_scheduler_type: SchedulerType | str = _lesson("cosine", "learning-rate schedule")
    warmup_steps: float = _lesson(0.03, "warmup: a fraction of all steps when < 1, else a number of steps")
    per_device_train_batch_size: int = _lesson(4, "examples per device and micro-batch")
    gradient_accumulation_steps: int = _lesson(4, "micro-batches per optimizer step")
    num_train_epochs: float = _lesson(3.0, "epochs")
    optim: OptimizerNames | str = _lesson("paged_adamw_32bit", "optimizer (paged ones fall back to plain AdamW on a CPU)")
    weight_decay: float = _lesson(0.001, "AdamW weight decay")
    max_grad_norm: float = _lesson(0.3, "gradient clipping (0 = off)")
    activation_checkpointing: bool | None = _lesson(True, "recompute activations in the backward pass to save memory")
    activation_checkpointing_kwargs: dict[str, Any] | str | None = field(
        default_factory=lambda: {"use_reentrant": False},
        metadata={"help": "passed to activation_checkpointing_enable() (default: {'use_reentrant': False}, which lets "
                  "gradients reach the adapters through a frozen base)"},
    )
    bf16: bool = _lesson(_bf16_supported(), "bf16 mixed precision (on where the GPU supports it)")
    fp16: bool = _lesson(torch.cuda.is_available() and not _bf16_supported(), "fp16 mixed precision (older GPUs)")
    logging_steps: float = _lesson(10, "log the train loss every this many steps")
    eval_strategy: IntervalStrategy | str = _lesson("steps", "when to evaluate")
    save_strategy: SaveStrategy | str = _lesson("steps", "when to save a checkpoint")
    save_total_limit: int | None = _lesson(3, "checkpoints kept (the best one is always kept)")
    load_best_model_at_end: bool = _lesson(True, "end with the checkpoint of the lowest eval loss")
    report_to: None | str | list[str] = _lesson("tensorboard", "where to log")


@dataclass
class ScriptArguments:
    """The run's own settings: what to train, on what, how to adapt it, and what the Diagnoser stops."""

    _argument_group_name = "reference run: model, data, LoRA, diagnosis"

    model: str = _lesson(str(ASSETS / "tiny-llama"), "base model: a hub id or a local directory")
    data: str = _lesson(str(ASSETS / "instructions-train.jsonl"), "training JSONL: instruction/response or messages")
    eval_data: str | None = field(
        default=None,
        metadata={"help": "evaluation JSONL (default: the shipped eval set with the shipped data, else 10%% of --data)"},
    )
    max_seq_length: int = _lesson(128, "tokens per example; longer ones are cut and counted")
    max_examples: int | None = field(default=None, metadata={"help": "use only the first N training examples"})
    max_eval_examples: int | None = field(default=None, metadata={"help": "use only the first N evaluation examples"})
    evals_per_epoch: int = _lesson(4, "evaluations per epoch, unless --eval_steps is given")
    lora_r: int = _lesson(8, "LoRA rank")
    lora_alpha: int = _lesson(16, "LoRA alpha (the update is scaled by alpha / r)")
    lora_dropout: float = _lesson(0.05, "LoRA dropout")
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "modules that get adapters (default: the attention projections)"},
    )
    no_4bit: bool = _lesson(False, "load the base in the compute dtype instead of 4-bit NF4")
    stop_on: list[str] = field(
        default_factory=lambda: list(KINDS),
        metadata={"help": f"failure kinds the Diagnoser stops training on, or 'none' (default: {' '.join(KINDS)})"},
    )
    scenario: str | None = field(
        default=None,
        metadata={
            "help": "reproduce a failure by changing only what a user gets wrong: exploding (learning rate far too "
            "high: 500000x, no clipping), flat (learning rate 1000x too low), overfitting (32 examples, 100 epochs, "
            "learning rate 10x)",
            "choices": SCENARIOS,
        },
    )
    mask_response: bool = _lesson(False, "reproduce the masking bug: the response is masked too (every label -100)")
    sweep: bool = _lesson(False, "run the grid search over --sweep_learning_rates x --sweep_lora_ranks instead")
    sweep_learning_rates: list[float] = field(
        default_factory=lambda: [1e-4, 2e-4, 5e-4], metadata={"help": "grid (default: 1e-4 2e-4 5e-4)"}
    )
    sweep_lora_ranks: list[int] = field(default_factory=lambda: [4, 8, 16], metadata={"help": "grid (default: 4 8 16)"})
    sweep_max_steps: int = _lesson(100, "optimizer steps per trial")
    repair: bool = _lesson(
        False,
        "when a failure is decided, go back to the last good checkpoint (or the start), apply the first fix and train "
        "the remaining steps into <output_dir>-repair-N; exit 0 repaired, 1 a failure remains, 4 not repairable",
    )
    max_repairs: int = _lesson(2, "repair attempts at most")
    retrain_overfitting: bool = _lesson(
        False, "with --repair, retrain overfitting with fewer epochs instead of keeping its best checkpoint"
    )


def apply_scenario(script: ScriptArguments, args: TrainingArguments) -> None:
    """Change only what a user would get wrong, so the Diagnoser meets each failure on the otherwise sound run."""
    if script.scenario == "exploding":
        # A LoRA on a normalised model stalls rather than diverges at 5e-3..1 (measured, docs/reference-run.md); only a
        # rate that overflows the weights to NaN blows up on every machine tried.
        args.learning_rate, args.max_grad_norm = args.learning_rate * 500_000, 0.0
    elif script.scenario == "flat":
        args.learning_rate = args.learning_rate / 1000
    elif script.scenario == "overfitting":
        script.max_examples, args.num_train_epochs, args.learning_rate = 32, 100.0, args.learning_rate * 10


# -- parse ----------------------------------------------------------------------------------------------------------
class ArgumentParser(HfArgumentParser):
    """HfArgumentParser whose errors are one line (its usage line lists a hundred flags)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def fail(message: str) -> NoReturn:
    print(f"python -m trainwatch.train: error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


def parse(argv: list[str] | None = None) -> tuple[ScriptArguments, QLoRATrainingArguments]:
    argv = sys.argv[1:] if argv is None else argv
    parser = ArgumentParser(
        (ScriptArguments, QLoRATrainingArguments),
        prog="python -m trainwatch.train",
        usage="%(prog)s [--model M] [--data FILE.jsonl] [--scenario S | --sweep] [any TrainingArguments field as --name value]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The reference QLoRA run with trainwatch's Diagnoser attached. With no flags: the tiny model and\n"
        "instruction set shipped in trainwatch/assets, offline, a few minutes on a CPU. Point --model at a hub id or\n"
        "a local checkpoint and --data at your JSONL to run the same textbook configuration on your own.",
        epilog="examples:\n"
        "  python -m trainwatch.train                          # the embedded run: healthy, a few minutes on a CPU\n"
        "  python -m trainwatch.train --scenario exploding     # watch the Diagnoser stop a failing run\n"
        "  python -m trainwatch.train --sweep                  # learning rate x LoRA rank grid search\n"
        "  python -m trainwatch.train --model Qwen/Qwen2.5-0.5B --data my.jsonl --max_seq_length 512\n"
        "  python -m trainwatch.train --scenario exploding --repair   # back to a good checkpoint, fixed, on\n"
        "exit status: 0 healthy (--repair: or repaired), 1 the Diagnoser found a failure (--repair: one remains),\n"
        "  2 a usage or data error, 4 (--repair) a failure no argument change can repair",
    )
    try:
        script, args = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as error:  # TrainingArguments' own validation
        fail(str(error).strip().splitlines()[0])
    if script.repair and script.sweep:
        fail("--repair repairs one run; a --sweep's failing trials are its findings")
    if script.max_repairs < 0:
        fail(f"--max_repairs must be ≥ 0, not {script.max_repairs}")
    script.stop_on = [] if script.stop_on == ["none"] else script.stop_on
    unknown = set(script.stop_on) - set(KINDS)
    if unknown:
        fail(f"--stop_on: unknown kind(s) {', '.join(sorted(unknown))}; choose from {', '.join(KINDS)} or none")
    script.user_eval_steps = any(a.split("=")[0] in ("--eval_steps", "--eval-steps") for a in argv)  # type: ignore[attr-defined]
    apply_scenario(script, args)
    return script, args


# -- data -----------------------------------------------------------------------------------------------------------
def load_data(script: ScriptArguments, tokenizer: Any) -> tuple[InstructionDataset, InstructionDataset]:
    """Train and eval sets, prompt masked; reports how many examples the max length cut into."""
    try:
        train = load_examples(script.data)
        if script.eval_data:
            evaluation = load_examples(script.eval_data)
        elif Path(script.data) == ASSETS / "instructions-train.jsonl":
            evaluation = load_examples(ASSETS / "instructions-eval.jsonl")
        else:
            held_out = max(1, len(train) // 10)
            train, evaluation = train[held_out:], train[:held_out]
    except DataError as error:
        fail(str(error))
    train, evaluation = train[: script.max_examples], evaluation[: script.max_eval_examples]
    if not train:
        fail(f"{script.data}: too few examples to hold out an evaluation set")
    datasets = [
        InstructionDataset(part, tokenizer, script.max_seq_length, mask_response=script.mask_response)
        for part in (train, evaluation)
    ]
    for name, dataset in zip(("train", "eval"), datasets):
        if dataset.truncated:
            print(
                f"{name}: {dataset.truncated} example(s) longer than --max_seq_length {script.max_seq_length} had "
                f"their response cut ({dataset.dropped} with nothing left of it, dropped)"
            )
    if not len(datasets[0]):
        fail(f"no training example has a response token left within --max_seq_length {script.max_seq_length}")
    return datasets[0], datasets[1]


# -- model ----------------------------------------------------------------------------------------------------------
def compute_dtype(args: TrainingArguments) -> torch.dtype:
    return torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32


def keep_4bit_layers_trainable_on_cpu(model: torch.nn.Module) -> int:
    """Keep bitsandbytes' inference-only CPU path out of a training run; returns how many layers were guarded.

    On CPUs with AVX512-BF16, bitsandbytes (0.48+) repacks a ``Linear4bit`` weight, in place, into a layout for its
    fast inference kernel the first time the layer runs in eval mode without grad - which is what every evaluation
    does - and keeps it until a checkpoint save unpacks it (lossily: the base weights move by about 0.2 % each
    time). That kernel has no backward (torch only warns that no autograd kernel is registered), so from the first
    evaluation on no gradient flows back through the base: measured on the shipped model, the gradients of every
    q/k/v adapter fall 100-1000x (to exactly 0 while ``lora_B`` is still 0) and only the o_proj adapters still learn,
    while the grad norm stays positive and the loss still falls. The Diagnoser's gradient probe reports it as
    "flat"/``frozen_layers``. The repacking is gated on the layer's ``support_avx512bf16_for_cpu`` flag; clearing
    it keeps the weights in the trainable layout. For your own model, before training:
    ``for m in model.modules(): if isinstance(m, bitsandbytes.nn.Linear4bit): m.support_avx512bf16_for_cpu = False``.
    """
    import bitsandbytes as bnb

    guarded = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            guarded += 1
    return guarded


def load_model(script: ScriptArguments, args: TrainingArguments) -> Any:
    """The base in 4-bit NF4 with double quantization, prepared for k-bit training, with LoRA on the attention."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    dtype = compute_dtype(args)
    device = "cpu" if args.use_cpu or not torch.cuda.is_available() else int(os.environ.get("LOCAL_RANK", 0))
    quantization = None if script.no_4bit else BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )
    try:
        model = AutoModelForCausalLM.from_pretrained(
            script.model, quantization_config=quantization, dtype=dtype, device_map={"": device}
        )
    except OSError as error:
        fail(f"--model {script.model}: {str(error).strip().splitlines()[0]}")
    if quantization is not None:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=bool(args.activation_checkpointing),
            gradient_checkpointing_kwargs=args.activation_checkpointing_kwargs,
        )
    lora = LoraConfig(
        r=script.lora_r, lora_alpha=script.lora_alpha, lora_dropout=script.lora_dropout,
        target_modules=script.lora_target_modules, task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as error:
        fail(f"--lora_target_modules: {str(error).strip().splitlines()[0]}")
    if quantization is not None:
        keep_4bit_layers_trainable_on_cpu(model)
    return model


# -- trainer --------------------------------------------------------------------------------------------------------
def adapt_to_hardware(args: TrainingArguments) -> None:
    """CPU-only settings. (A paged optimizer needs none: bitsandbytes itself falls back to the same optimizer,
    unpaged, on a CPU, with a warning.)"""
    if not torch.cuda.is_available():
        args.dataloader_pin_memory = False  # pinned memory only speeds up copies to a GPU


def schedule_evaluations(script: ScriptArguments, args: TrainingArguments, train_size: int) -> None:
    """Evaluate (and save, so the best checkpoint can be loaded at the end) several times per epoch, but not more
    often than the train loss is logged: each evaluation is judged against the train loss of the same moment."""
    if getattr(script, "user_eval_steps", False) or args.eval_strategy != IntervalStrategy.STEPS:
        return
    steps_per_epoch = max(1, train_size // effective_batch_size(args))
    total = args.max_steps if args.max_steps > 0 else steps_per_epoch
    args.eval_steps = max(int(args.logging_steps), min(steps_per_epoch, total) // script.evals_per_epoch, 1)
    if args.save_strategy == SaveStrategy.STEPS:
        args.save_steps = args.eval_steps


def effective_batch_size(args: TrainingArguments) -> int:
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)


def expected_steps(args: TrainingArguments, train_size: int) -> int:
    if args.max_steps > 0:
        return args.max_steps
    return (train_size // effective_batch_size(args)) * math.ceil(args.num_train_epochs)


def build_trainer(script: ScriptArguments, args: TrainingArguments, tokenizer: Any) -> tuple[Trainer, Diagnoser]:
    train, evaluation = load_data(script, tokenizer)
    adapt_to_hardware(args)
    schedule_evaluations(script, args, len(train))
    diagnoser = Diagnoser(stop_on=script.stop_on, max_seq_length=script.max_seq_length)
    trainer = Trainer(
        model=load_model(script, args),
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, pad_to_multiple_of=8),
        processing_class=tokenizer,
        callbacks=[diagnoser],
    )
    planned = "max_steps" if args.max_steps > 0 else (
        f"{len(train)} examples // {effective_batch_size(args)} × {args.num_train_epochs:g} epochs"
    )
    print(
        f"effective batch size {effective_batch_size(args)} (per device {args.per_device_train_batch_size} × "
        f"accumulation {args.gradient_accumulation_steps} × devices {max(1, args.world_size)}); expected total "
        f"steps {expected_steps(args, len(train))} ({planned}); evaluating every {args.eval_steps} steps on "
        f"{len(evaluation)} examples"
    )
    return trainer, diagnoser


def load_tokenizer(script: ScriptArguments) -> Any:
    try:
        tokenizer = AutoTokenizer.from_pretrained(script.model)
    except (OSError, ValueError) as error:
        fail(f"--model {script.model}: {str(error).strip().splitlines()[0]}")
    if tokenizer.pad_token is None:  # safe: labels are built before padding, and padded with -100
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# -- train and report -----------------------------------------------------------------------------------------------
def train(script: ScriptArguments, args: TrainingArguments, tokenizer: Any, max_repairs: int = 0) -> RepairResult:
    """One run, and with ``max_repairs`` its repairs: the same entry point as for a user's own Trainer."""
    return train_with_repair(
        lambda attempt_args: build_trainer(script, attempt_args, tokenizer)[0],
        args,
        max_repairs=max_repairs,
        retrain_overfitting=script.retrain_overfitting,
    )


def report(result: RepairResult, args: TrainingArguments) -> None:
    """Each run's verdict and fixes, with the numbers that show its curve; then the repair's story."""
    for attempt in result.attempts:
        notes = []
        evals = [loss for _, loss in attempt.eval_losses]
        if evals:
            drop = 1 - evals[-1] / evals[0] if evals[0] else 0.0
            notes.append(f"eval loss {evals[0]:.4g} → {evals[-1]:.4g} ({drop:.0%} lower) over {len(evals)} evaluations")
        if attempt.stopped_by:
            finding = attempt.stopped_by
            notes.append(
                f"stopped early by the Diagnoser: {finding.kind} ({finding.cause}) at step {finding.step}; "
                "checkpoints were kept"
            )
        title = f"trainwatch ({attempt.steps} steps, {attempt.output_dir})"
        print(format_report(attempt.findings, title=title, notes=notes))
    if torch.cuda.is_available() and not args.use_cpu:
        print(f"peak GPU memory allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    if len(result.attempts) > 1 or result.story:
        print(result.format())


# -- grid search ----------------------------------------------------------------------------------------------------
def sweep(script: ScriptArguments, args: TrainingArguments, tokenizer: Any) -> int:
    """The lesson's grid search: one short run per (learning rate, LoRA rank), each watched by its own Diagnoser,
    so a failing trial stops early and is marked instead of burning its whole budget."""
    rows = []
    grid = list(itertools.product(script.sweep_learning_rates, script.sweep_lora_ranks))
    for number, (learning_rate, rank) in enumerate(grid, 1):
        print(f"\n== trial {number}/{len(grid)}: learning_rate {learning_rate:g}, lora_r {rank}")
        trial_args = copy.deepcopy(args)
        trial_args.output_dir = str(Path(args.output_dir) / f"lr{learning_rate:g}-r{rank}")
        trial_args.learning_rate, trial_args.max_steps = learning_rate, script.sweep_max_steps
        (trial,) = train(replace(script, lora_r=rank), trial_args, tokenizer).attempts
        evals = [loss for _, loss in trial.eval_losses]
        stopped = trial.stopped_by
        rows.append({
            "learning_rate": learning_rate,
            "lora_r": rank,
            "val_loss": min(evals) if evals else None,
            "last_val_loss": evals[-1] if evals else None,
            "steps": trial.steps,
            "diagnosis": trial.verdict,
            "cause": trial.failure.cause if trial.failure else None,
            "stopped": f"{stopped.kind} ({stopped.cause}) at step {stopped.step}" if stopped else None,
        })
    rows.sort(key=lambda r: (r["diagnosis"] != "healthy", r["val_loss"] is None, r["val_loss"] or 0.0))
    out = Path(args.output_dir)
    write_json_atomic(out / "sweep.json", {"trials": rows, "best": rows[0] if rows[0]["diagnosis"] == "healthy" else None})
    with (out / "sweep.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print("\n" + format_sweep(rows))
    print(f"written: {out / 'sweep.json'}, {out / 'sweep.csv'}")
    best = rows[0]
    if best["diagnosis"] != "healthy":
        print("best setting: none - every trial failed")
        return 1
    print(f"best setting: learning_rate {best['learning_rate']:g}, lora_r {best['lora_r']} (val loss {best['val_loss']:.4f})")
    return 0


def format_sweep(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'rank':>4}  {'learning_rate':>13}  {'lora_r':>6}  {'val_loss':>8}  {'steps':>5}  diagnosis"]
    for i, row in enumerate(rows, 1):
        loss = f"{row['val_loss']:.4f}" if row["val_loss"] is not None else "-"
        diagnosis = row["diagnosis"] + (f" ({row['cause']}), stopped at step {row['steps']}" if row["cause"] else "")
        lines.append(f"{i:>4}  {row['learning_rate']:>13g}  {row['lora_r']:>6}  {loss:>8}  {row['steps']:>5}  {diagnosis}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    script, args = parse(argv)
    tokenizer = load_tokenizer(script)
    if script.sweep:
        return sweep(script, args, tokenizer)
    result = train(script, args, tokenizer, max_repairs=script.max_repairs if script.repair else 0)
    report(result, args)
    if script.repair:
        return result.exit_code
    return 0 if result.attempts[0].verdict == HEALTHY else 1


if __name__ == "__main__":
    sys.exit(main())
