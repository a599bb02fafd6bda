"""What the pre-flight reads from a live run: its data (collated as the run collates it), memory, precision and
model, each reduced over the ranks where a rank measures it alone, so that every rank decides alike.

The checks themselves are pure and live in :mod:`trainwatch.preflight`; :class:`~trainwatch.callbacks.Diagnoser`
calls these to feed them.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerState, TrainingArguments

from trainwatch import preflight as checklist


def inspect_data(
    args: TrainingArguments, model: Any, hooks: dict[str, Any], max_length: int | None
) -> tuple[int, checklist.TargetCount | None, list[checklist.Check]]:
    """Count target tokens by collating the train set's own examples, with every random state left as it was.

    Returns the examples with targets on the process that saw most (-1: none could inspect), this process's
    count, and the checklist items.
    """
    import random

    import torch

    loader = hooks.get("train_dataloader")
    count, problem = None, ""
    python_state, numpy_state = random.getstate(), _numpy_state()
    try:
        with torch.random.fork_rng(devices=[]):
            count = checklist.count_targets(
                getattr(loader, "dataset", None), getattr(loader, "collate_fn", None),
                max_length=max_length, eos_token_id=_eos_token_id(model, hooks.get("processing_class")),
            )
    except Exception as error:  # noqa: BLE001 - a dataset we cannot read is reported, not fatal
        problem = f"{type(error).__name__}: {error}"
    finally:
        random.setstate(python_state)
        if numpy_state is not None:
            import numpy

            numpy.random.set_state(numpy_state)
    # Every rank takes part in the reduction, whatever it could read, so none waits for another and all decide alike.
    with_targets = _reduce_max(count.with_targets if count else -1, args)
    if count is not None and (count.with_targets > 0 or with_targets == 0):
        return with_targets, count, [*checklist.check_targets(count), checklist.check_truncation(count, max_length)]
    if with_targets < 0:
        return with_targets, None, [checklist.Check(
            "target tokens", checklist.SKIP, f"the train set cannot be inspected here ({problem})",
            "run `trainwatch check` on the data, or count examples with labels != -100 yourself",
        )]
    if count is not None:  # this share has none, another process's has
        return with_targets, count, [checklist.Check(
            "target tokens", checklist.WARN,
            f"none of this process's {count.inspected} inspected examples has a target token; another process's share has",
            "check the label masking of this process's share: its compute teaches nothing",
        )]
    elsewhere = "has no target token either" if with_targets == 0 else "has targets"
    return with_targets, None, [checklist.Check(
        "target tokens", checklist.FAIL if with_targets == 0 else checklist.PASS,
        f"this process cannot inspect its share ({problem}); another process's share {elsewhere}",
        "check the label masking of every process's data" if with_targets == 0 else "",
    )]


def _numpy_state() -> Any:
    try:
        import numpy
    except ImportError:
        return None
    return numpy.random.get_state()


def _reduce_max(value: int, args: TrainingArguments) -> int:
    """The largest ``value`` over all processes (itself outside a distributed run)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=args.device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def _eos_token_id(model: Any, tokenizer: Any) -> int | None:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    return eos if isinstance(eos, int) else None


def gpu_memory(args: TrainingArguments) -> tuple[int | None, int | None]:
    """Memory reserved on this process's GPU (the largest over all processes) and the card's size."""
    import torch

    if not on_cuda(args):
        return None, None
    used = _reduce_max(torch.cuda.max_memory_reserved(args.device), args)
    return used, torch.cuda.get_device_properties(args.device).total_memory


def on_cuda(args: TrainingArguments) -> bool:
    return getattr(args.device, "type", None) == "cuda"


def bf16_supported(args: TrainingArguments) -> bool:
    import torch

    return on_cuda(args) and torch.cuda.is_bf16_supported()


def parameter_count(model: Any) -> int | None:
    parameters = getattr(model, "parameters", None)
    return sum(p.numel() for p in parameters()) if callable(parameters) else None


def quantized(model: Any) -> bool:
    """A 4-/8-bit base (QLoRA), as transformers marks it."""
    return bool(
        getattr(model, "is_loaded_in_4bit", False)
        or getattr(model, "is_loaded_in_8bit", False)
        or getattr(getattr(model, "config", None), "quantization_config", None)
    )


def steps_per_epoch(state: TrainerState, args: TrainingArguments, loader: Any = None) -> int:
    """Optimizer steps in one pass over the train set (from the dataloader when it has a length)."""
    try:
        return max(1, len(loader) // args.gradient_accumulation_steps)
    except TypeError:
        return max(1, math.ceil(state.max_steps / max(state.num_train_epochs, 1)))
