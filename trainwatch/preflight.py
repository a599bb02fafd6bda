"""The checklist to run before walking away from a training job, each item pass / warn / fail / skip with its fix.

Every check is a pure function of what it is given (a dataset and its collate function, the training arguments,
the model, a memory reading, two losses), so ``trainwatch check`` and the live :class:`~trainwatch.callbacks.
Diagnoser` run the same code. The dataset is inspected by collating its examples directly, never by iterating the
train dataloader: that would advance the sampler's random state and change the user's run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from trainwatch.history import hidden_nan

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
IGNORE_INDEX = -100
EARLY_LOSS = "loss down by step 10"


@dataclass(frozen=True)
class Check:
    """One checklist item: its verdict, what was seen, and what to change (empty when nothing needs changing)."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def format_checks(checks: Sequence[Check], *, title: str = "trainwatch pre-flight") -> str:
    """The checklist as lines a person reads at a glance: ``[warn] name: detail -> fix``."""
    lines = [title + ":"]
    for check in checks:
        fix = f"\n         fix: {check.fix}" if check.fix and check.status in (WARN, FAIL) else ""
        lines.append(f"  [{check.status}] {check.name}: {check.detail}{fix}")
    return "\n".join(lines)


# -- the data -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetCount:
    """Target tokens per example over the inspected examples (all of them, or an evenly spaced sample)."""

    dataset_size: int
    inspected: int
    without_targets: int
    at_max_length: int
    """Inspected examples that fill the whole window (``max_length`` tokens): their text may have been cut."""
    cut_responses: int
    """Of those, examples whose response was cut: no target left at all, or a last target that is not EOS."""

    @property
    def with_targets(self) -> int:
        return self.inspected - self.without_targets

    @property
    def estimated_with_targets(self) -> int:
        """Examples with targets in the whole set (exact when every example was inspected)."""
        if self.inspected == 0:
            return 0
        return round(self.with_targets * self.dataset_size / self.inspected)


def count_targets(
    dataset: Any,
    collate_fn: Callable[[list[Any]], Any],
    *,
    sample_size: int = 512,
    batch_size: int = 32,
    max_length: int | None = None,
    eos_token_id: int | None = None,
) -> TargetCount:
    """Collate (a bounded, evenly spaced sample of) ``dataset`` and count each example's target tokens.

    A target is a label other than -100 that the causal-LM loss uses: labels are shifted by one position, so the
    first label of a sequence is never predicted and does not count. ``max_length`` and ``eos_token_id``, when
    known, let the count tell a response that was truncated away (the prompt filled the window) or cut short.
    Raises ``TypeError`` for a dataset that cannot be indexed or batches without labels: the caller says "skip".
    """
    size = len(dataset)
    indices = list(range(size)) if size <= sample_size else [i * size // sample_size for i in range(sample_size)]
    without, at_max, cut = 0, 0, 0
    for start in range(0, len(indices), batch_size):
        batch = collate_fn([dataset[i] for i in indices[start : start + batch_size]])
        labels = batch.get("labels") if hasattr(batch, "get") else None
        if labels is None or not hasattr(labels, "ndim") or labels.ndim != 2:
            raise TypeError("the collated batch has no 2-D 'labels' tensor")
        targets = labels[:, 1:] != IGNORE_INDEX
        per_example = targets.sum(dim=1)
        without += int((per_example == 0).sum())
        if max_length is None:
            continue
        attention = batch.get("attention_mask")
        lengths = attention.sum(dim=1) if attention is not None else labels.new_full((len(labels),), labels.shape[1])
        for row, length, count in zip(labels.tolist(), lengths.tolist(), per_example.tolist()):
            if length < max_length:
                continue
            at_max += 1
            last = [t for t in row if t != IGNORE_INDEX][-1:] if count else []
            if count == 0 or (eos_token_id is not None and last and last[0] != eos_token_id):
                cut += 1
    return TargetCount(size, len(indices), without, at_max, cut)


def check_targets(count: TargetCount, *, min_examples: int = 100) -> list[Check]:
    """The data items of the checklist: enough examples with targets, none without, no response cut away."""
    where = "the" if count.inspected == count.dataset_size else f"{count.inspected} sampled of"
    approx = "" if count.inspected == count.dataset_size else "≈"
    if count.with_targets == 0:
        return [Check(
            "target tokens", FAIL,
            f"none of {where} {count.dataset_size} examples has a target token (every label is -100): the loss "
            "has nothing to learn from",
            "check the label masking (the response template must match the data; mask only the prompt) and that "
            "max sequence length leaves room for the response",
        )]
    checks = []
    if count.estimated_with_targets < min_examples:
        checks.append(Check(
            "examples with targets", WARN,
            f"{approx}{count.estimated_with_targets} examples have target tokens, fewer than {min_examples}",
            f"train on at least {min_examples} examples: with fewer the model memorises instead of learning",
        ))
    else:
        checks.append(Check("examples with targets", PASS, f"{approx}{count.estimated_with_targets} examples have target tokens"))
    if count.without_targets:
        checks.append(Check(
            "examples without targets", WARN,
            f"{count.without_targets} of {where} {count.dataset_size} examples have 0 target tokens (all -100): "
            "they cost compute and teach nothing",
            "drop them, or fix the masking / max sequence length that removes their response",
        ))
    else:
        checks.append(Check("examples without targets", PASS, f"each of {where} {count.dataset_size} examples has target tokens"))
    return checks


def check_truncation(count: TargetCount, max_length: int | None) -> Check:
    """Is the window long enough for the whole assistant response?"""
    if max_length is None:
        return Check("max sequence length", SKIP, "the max sequence length is not known here",
                     "pass it (trainwatch check --max-seq-length N) to count truncated responses")
    if count.cut_responses:
        return Check(
            "max sequence length", WARN,
            f"{count.cut_responses} of {count.inspected} inspected examples fill all {max_length} tokens with their "
            "response cut short or truncated away",
            f"raise the max sequence length above {max_length}, or drop/shorten the longest examples",
        )
    return Check("max sequence length", PASS,
                 f"no inspected response is cut at {max_length} tokens ({count.at_max_length} examples fill the window)")


# -- the arguments --------------------------------------------------------------------------------------------------
def check_precision(args: Any, *, cuda: bool, bf16_supported: bool) -> Check:
    """bf16 where the GPU supports it (Ampere and later), fp16 on older GPUs; nothing to choose on a CPU."""
    bf16, fp16 = bool(getattr(args, "bf16", False)), bool(getattr(args, "fp16", False))
    if not cuda:
        return Check("mixed precision", SKIP, "no GPU: mixed precision is not checked on a CPU run")
    if bf16_supported:
        if bf16:
            return Check("mixed precision", PASS, "bf16 on (supported by this GPU)")
        return Check("mixed precision", WARN, f"bf16 is supported but off (fp16={fp16})",
                     "bf16=True, fp16=False: same speed and memory as fp16 without its overflow")
    if fp16:
        return Check("mixed precision", PASS, "fp16 on (this GPU has no bf16)")
    return Check("mixed precision", WARN, "neither bf16 (not supported here) nor fp16 is on",
                 "fp16=True: about half the memory and twice the speed of fp32")


def check_gradient_checkpointing(args: Any, parameters: int | None, *, large_model: float = 1e9) -> Check:
    """Large models (``large_model`` parameters or more) need gradient checkpointing to fit their activations
    (``activation_checkpointing``; ``gradient_checkpointing`` is its deprecated alias in transformers 5)."""
    on = bool(getattr(args, "activation_checkpointing", False))
    if parameters is None:
        return Check("gradient checkpointing", SKIP, "model size unknown")
    size = f"{parameters / 1e9:.2g}B parameters" if parameters >= 1e8 else f"{parameters:,} parameters"
    if parameters >= large_model and not on:
        return Check("gradient checkpointing", WARN, f"off for a model of {size}",
                     "activation_checkpointing=True: trades ~30 % speed for most of the activation memory")
    return Check("gradient checkpointing", PASS, f"{'on' if on else 'off'} ({size})")


def check_warmup(warmup_steps: int, total_steps: int, *, target: float = 0.03, low: float = 0.01, high: float = 0.1) -> Check:
    """Warmup near ``target`` of the run: none risks an early spike, too much wastes the run at a low rate."""
    if total_steps <= 0:
        return Check("warmup", SKIP, "the total number of steps is not known")
    ratio = warmup_steps / total_steps
    detail = f"{warmup_steps} of {total_steps} steps ({ratio:.1%})"
    if low <= ratio <= high:
        return Check("warmup", PASS, detail)
    return Check("warmup", WARN, f"{detail}, target ≈ {target:.0%}",
                 f"warmup_steps={target} (a ratio) = {math.ceil(target * total_steps)} steps")


def check_grad_clipping(args: Any, *, quantized: bool, qlora_max: float = 0.3) -> Check:
    """Clipping on; at most ``qlora_max`` for QLoRA, whose 4-bit base makes rare huge gradients."""
    norm = getattr(args, "max_grad_norm", None)
    if not norm or norm <= 0:
        return Check("gradient clipping", WARN, "max_grad_norm is off",
                     f"max_grad_norm={qlora_max if quantized else 1.0}: one bad batch cannot blow up the weights")
    if quantized and norm > qlora_max:
        return Check("gradient clipping", WARN, f"max_grad_norm={norm:g} on a quantized (QLoRA) model",
                     f"max_grad_norm={qlora_max} (the QLoRA value)")
    return Check("gradient clipping", PASS, f"max_grad_norm={norm:g}")


def check_learning_rate(
    args: Any,
    *,
    lora: bool,
    lora_range: tuple[float, float] = (1e-4, 3e-4),
    lora_value: float = 2e-4,
    full_range: tuple[float, float] = (2e-5, 2e-5),
    full_value: float = 2e-5,
    factor: float = 10.0,
) -> Check:
    """The learning rate near the lesson's: LoRA/QLoRA ``lora_range`` (1e-4–3e-4), full fine-tuning about 2e-5.

    The band is generous, as the right rate depends on the model, the batch size and the data: a rate passes from
    ``range[0] / factor`` to ``range[1] × factor``, and only one further out warns (above it the loss tends to blow
    up in the first steps, below it the run hardly moves), with ``lora_value`` / ``full_value`` as the fix.
    """
    rate = getattr(args, "learning_rate", None)
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not math.isfinite(rate) or rate < 0:
        return Check("learning rate", SKIP, f"learning_rate {rate!r} is not a rate")
    if lora:
        what, (low, high), value = "LoRA/QLoRA", lora_range, lora_value
    else:
        what, (low, high), value = "full fine-tuning", full_range, full_value
    lesson = f"{low:g}–{high:g}" if low != high else f"≈ {low:g}"
    fix = f"learning_rate {rate:g} → {value:g} (the usual rate for {what})"
    if rate == 0:
        return Check("learning rate", WARN, "learning_rate is 0: nothing is learned", fix)
    edge = 1 + 1e-9  # a rate exactly on the band's edge (3e-4 x 10) is inside it, whatever the float rounding
    if rate > high * factor * edge:
        return Check("learning rate", WARN, f"{rate:g} for {what}, over {factor:g}× the usual {lesson}: "
                     "the loss is likely to blow up in the first steps", fix)
    if rate * edge < low / factor:
        return Check("learning rate", WARN, f"{rate:g} for {what}, under 1/{factor:g} of the usual {lesson}: "
                     "the loss is likely to hardly move", fix)
    return Check("learning rate", PASS, f"{rate:g} for {what} (usual {lesson})")


def check_evaluation(args: Any, steps_per_epoch: int, *, min_per_epoch: int = 3) -> Check:
    """Several evaluations per epoch: overfitting can only be seen, and stopped, between evaluations."""
    strategy = str(getattr(getattr(args, "eval_strategy", "no"), "value", getattr(args, "eval_strategy", "no")))
    fix = f"eval_strategy='steps', eval_steps={max(1, steps_per_epoch // min_per_epoch)} (≈ {min_per_epoch} per epoch)"
    if strategy == "no":
        return Check("evaluation", WARN, "no evaluation during training: overfitting cannot be seen",
                     "an eval_dataset and " + fix)
    if strategy == "epoch":
        per_epoch = 1.0
    elif strategy == "steps":
        eval_steps = getattr(args, "eval_steps", None) or getattr(args, "logging_steps", 0)
        if 0 < eval_steps < 1:  # a ratio of the total steps
            return Check("evaluation", PASS, f"every {eval_steps:.0%} of the run")
        per_epoch = steps_per_epoch / eval_steps if eval_steps else 0.0
    else:
        return Check("evaluation", SKIP, f"eval_strategy {strategy!r}")
    detail = f"{per_epoch:.3g} evaluations per epoch"
    if per_epoch >= min_per_epoch:
        return Check("evaluation", PASS, detail)
    return Check("evaluation", WARN, f"{detail}, fewer than {min_per_epoch}", fix)


def check_save_limit(args: Any) -> Check:
    """A checkpoint limit, so a long run does not fill the disk (trainwatch never deletes one itself)."""
    limit = getattr(args, "save_total_limit", None)
    if str(getattr(getattr(args, "save_strategy", ""), "value", getattr(args, "save_strategy", ""))) == "no":
        return Check("save_total_limit", SKIP, "no checkpoints are saved (save_strategy='no')")
    if limit:
        return Check("save_total_limit", PASS, f"save_total_limit={limit}")
    return Check("save_total_limit", WARN, "no limit: every checkpoint is kept until the disk is full",
                 "save_total_limit=3 (with load_best_model_at_end=True the best one is always kept)")


# -- the first steps ------------------------------------------------------------------------------------------------
def check_memory(used_bytes: int | None, total_bytes: int | None, *, limit: float = 0.9) -> Check:
    """GPU memory at step 1 below ``limit`` of the card: above it, a longer batch later runs out of memory."""
    if used_bytes is None or not total_bytes:
        return Check("GPU memory at step 1", SKIP, "no GPU: memory is not checked on a CPU run")
    share = used_bytes / total_bytes
    detail = f"{used_bytes / 2**30:.1f} of {total_bytes / 2**30:.1f} GiB ({share:.0%})"
    if share < limit:
        return Check("GPU memory at step 1", PASS, detail)
    return Check("GPU memory at step 1", WARN, f"{detail}, above {limit:.0%}",
                 "halve per_device_train_batch_size and double gradient_accumulation_steps, or turn on "
                 "activation_checkpointing: the longest batch has not come yet")


def check_early_loss(
    start: float, start_step: int, level: float, step: int, *, last: float | None = None, grad_norm: float | None = None
) -> Check:
    """The loss has gone down by step 10: if not, something is wrong long before a rule can say what.

    ``start`` is the first logged loss, ``level`` the smoothed loss at the first log from step 10 on (later when
    the first log is itself at step 10 or after: there is nothing to compare before the second one). ``last`` and
    ``grad_norm``, the loss and grad norm logged at ``step``, tell a NaN hidden as 0.0 (:func:`hidden_nan`) after a
    positive start from real progress.
    """
    seen = f"{start:.4g} at step {start_step}, {level:.4g} at step {step}"
    if not (math.isfinite(start) and math.isfinite(level)):
        return Check(EARLY_LOSS, FAIL, f"the loss is not finite ({seen})", "see the exploding / flat diagnosis for the cause")
    if start > 0 and hidden_nan(level if last is None else last, grad_norm):
        return Check(
            EARLY_LOSS, FAIL,
            f"the loss is NaN, logged as 0.0 by logging_nan_inf_filter beside a grad norm of {grad_norm} ({seen})",
            "see the exploding diagnosis for the cause",
        )
    if level < start:
        return Check(EARLY_LOSS, PASS, seen.replace(", ", " → "))
    return Check(EARLY_LOSS, WARN, f"{seen}: not lower",
                 "check the learning rate (and warmup) and the labels before the run goes on")


def check_first_loss(
    start: float, start_step: int, reference: float | None, *, accumulation: int = 1, factor: float = 2.0
) -> Check:
    """A per-token cross-entropy starts at or below a uniform guess ln(vocab), and never at ``factor`` × that before an
    update: a first loss that high, logged at step 1, is a loss summed over tokens, or one multiplied by the
    gradient accumulation factor (a custom loss or training loop that does not divide by it). Neither is an
    explosion, and the run may learn; but thresholds, clipping and the learning rate then act on the wrong scale.
    Logged after some updates, such a loss is an explosion, which the exploding rule decides."""
    name = "first loss vs a uniform guess"
    if reference is None or not math.isfinite(start):
        return Check(name, SKIP, "the vocabulary size is unknown" if reference is None else f"the first loss is {start}")
    ratio = start / reference
    seen = f"{start:.4g} at step {start_step}, {ratio:.2g} × ln(vocab) = {reference:.4g}"
    if ratio < factor:
        return Check(name, PASS, seen)
    if start_step > 1:
        return Check(name, FAIL, f"{seen}, after {start_step - 1} update(s)", "see the exploding diagnosis")
    if accumulation > 1 and abs(ratio / accumulation - 1) <= 0.25:
        return Check(
            name, WARN, f"{seen}: about gradient_accumulation_steps = {accumulation} × a uniform guess, before any "
            "update: the loss is multiplied by the accumulation factor",
            "divide the loss by gradient_accumulation_steps in your compute_loss (or pass num_items_in_batch), "
            "as Trainer's own loss does",
        )
    return Check(
        name, WARN, f"{seen}, before any update: no per-token mean starts there; the loss is summed over tokens",
        "average the loss over the target tokens (reduction='mean', or divide by the number of labels != -100)",
    )


def effective_batch_size(args: Any) -> int:
    """Examples per optimizer step over all processes."""
    return int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps) * max(1, int(getattr(args, "world_size", 1)))


# -- trainwatch check -----------------------------------------------------------------------------------------------
def check_instruction_data(path: str, model: str, max_length: int, *, min_examples: int = 100) -> list[Check]:
    """The data items of the checklist for a JSONL training set, tokenized as the reference script does.

    Unlike the live check, every example is inspected, before the script drops those with nothing of the response
    left. Raises :class:`trainwatch.data.DataError` for an unreadable data file and ``OSError``/``ValueError`` for a
    tokenizer that cannot be loaded.
    """
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq

    from trainwatch.data import encode, load_examples

    examples = load_examples(path)
    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token is None:  # as the reference script: labels are padded with -100, never with EOS
        tokenizer.pad_token = tokenizer.eos_token
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in (encode(x, tokenizer, max_length) for x in examples)]
    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX)
    count = count_targets(rows, collate, sample_size=len(rows), max_length=max_length, eos_token_id=tokenizer.eos_token_id)
    return [*check_targets(count, min_examples=min_examples), check_truncation(count, max_length)]
