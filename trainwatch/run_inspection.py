"""What the pre-flight reads from a live run: its data (collated as the run collates it), memory, precision and
model (which tensors can be trained, and whether a gradient can reach them), each reduced over the ranks where a rank
measures it alone, so that every rank decides alike.

The checks themselves are pure and live in :mod:`trainwatch.preflight`; :class:`~trainwatch.callbacks.Diagnoser`
calls these to feed them.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import TrainerState, TrainingArguments

from trainwatch import preflight as checklist
from trainwatch.fixes import fixes_for
from trainwatch.gradients import Blockage, GradientPath, why_no_gradient


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


# -- the gradient path ------------------------------------------------------------------------------------------------
TRAINABLE = "trainable parameters"
_LORA_WEIGHTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")


def check_trainable(model: Any, params: Any) -> tuple[checklist.Check, Blockage | None]:
    """The checklist item "trainable parameters": how many, and whether a gradient can reach them; with the
    :class:`~trainwatch.gradients.Blockage` when one cannot (a run that would learn nothing, or crash on its first
    backward pass with "element 0 of tensors does not require grad")."""
    path = gradient_path(model)
    if path is None:
        return checklist.Check(TRAINABLE, checklist.SKIP, "the model's parameters cannot be read here"), None
    blockage = why_no_gradient(path)
    if blockage is not None:
        fixes = fixes_for(blockage.cause, params)
        return checklist.Check(TRAINABLE, checklist.FAIL, blockage.summary, fixes[0] if fixes else ""), blockage
    # DeepSpeed ZeRO-3 keeps a partitioned tensor's full size in ds_numel
    trainable = sum(getattr(p, "ds_numel", None) or p.numel() for p in model.parameters() if p.requires_grad)
    detail = f"{len(path.trainable)} of {path.parameters} tensors train ({trainable:,} parameters), and a gradient can reach them"
    return checklist.Check(TRAINABLE, checklist.PASS, detail), None


def blocked_gradients(model: Any) -> Blockage | None:
    """Why no gradient can reach (some of) the model's trainable tensors, when its configuration shows it."""
    path = gradient_path(model)
    return why_no_gradient(path) if path is not None else None


def gradient_path(model: Any) -> GradientPath | None:
    """Read what decides whether a backward pass reaches the trainable tensors: ``requires_grad`` flags, the LoRA
    layers' scaling and weights, PEFT's config, a 4/8-bit base, reentrant checkpointing and whether the input
    embeddings' output requires grad. None for a model whose parameters cannot be read."""
    named = getattr(model, "named_parameters", None)
    if not callable(named):
        return None
    parameters = list(named())
    trainable = tuple(n for n, p in parameters if p.requires_grad)
    modules = dict(model.named_modules())
    adapters, zero_scaled, zero_lora = _lora_tensors(modules)
    config = next(iter((getattr(model, "peft_config", None) or {}).values()), None)
    reentrant = tuple(name for name, module in modules.items() if _reentrant(module))
    inside = tuple(n for n in trainable if any(n.startswith(layer + ".") for layer in reentrant))
    output = _module_name(modules, model, "get_output_embeddings")
    elsewhere = tuple(n for n in trainable if n not in inside and not (output and n.startswith(output + ".")))
    return GradientPath(
        parameters=len(parameters),
        trainable=trainable,
        adapters=adapters,
        adapters_for_inference=bool(getattr(config, "inference_mode", False)),
        quantized=quantized(model),
        lora_r=_number(getattr(config, "r", None)),
        lora_alpha=_number(getattr(config, "lora_alpha", None)),
        zero_scaled=zero_scaled,
        zero_lora=zero_lora,
        reentrant_layers=reentrant,
        inputs_require_grad=_inputs_require_grad(model),
        in_reentrant_layers=inside,
        elsewhere=elsewhere,
    )


def _lora_tensors(modules: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The LoRA layers' tensors; those of an adapter scaled by 0; those of an adapter whose A and B are both zero."""
    adapters: list[str] = []
    zero_scaled: list[str] = []
    zero_lora: list[str] = []
    for name, module in modules.items():
        scaling = getattr(module, "scaling", None)
        if not (isinstance(scaling, dict) and hasattr(module, "lora_A")):
            continue
        own = [(n, p) for n, p in module.named_parameters(prefix=name) if ".lora_" in n]
        adapters += [n for n, _ in own]
        for adapter, scale in scaling.items():
            weights = [(n, p) for n, p in own if _is_lora_weight(n, name, adapter)]
            if scale == 0:
                zero_scaled += [n for n, _ in weights]
            readable = weights and all(p.numel() for _, p in weights)  # not partitioned away (DeepSpeed ZeRO-3)
            if readable and not any(bool(p.detach().any()) for _, p in weights):
                zero_lora += [n for n, _ in weights]
    return tuple(adapters), tuple(zero_scaled), tuple(zero_lora)


def _is_lora_weight(name: str, layer: str, adapter: str) -> bool:
    """``layer.lora_A.<adapter>.weight``, ``layer.lora_embedding_B.<adapter>`` and the like."""
    parts = name.removeprefix(layer + ".").split(".")
    return len(parts) >= 2 and parts[0] in _LORA_WEIGHTS and parts[1] == adapter


def _reentrant(module: Any) -> bool:
    """A transformers layer checkpointed with ``use_reentrant=True`` (or unset: torch's default is then True)."""
    if not getattr(module, "gradient_checkpointing", False):
        return False
    from transformers.modeling_layers import GradientCheckpointingLayer

    if not isinstance(module, GradientCheckpointingLayer):
        return False
    checkpoint = getattr(module, "_gradient_checkpointing_func", None)
    import torch.utils.checkpoint

    if getattr(checkpoint, "func", None) is not torch.utils.checkpoint.checkpoint:
        return False  # offloaded, or someone's own function: not known to be reentrant
    return getattr(checkpoint, "keywords", {}).get("use_reentrant", True) in (True, None)


def _inputs_require_grad(model: Any) -> bool:
    """A trainable input embedding, or one with a forward hook (``enable_input_require_grads()`` adds one)."""
    getter = getattr(model, "get_input_embeddings", None)
    try:
        embeddings = getter() if callable(getter) else None
    except (NotImplementedError, AttributeError):
        embeddings = None
    if embeddings is None:
        return True  # unknown: not evidence of the contrary
    hooked = bool(getattr(embeddings, "_forward_hooks", None))
    return hooked or any(p.requires_grad for p in embeddings.parameters())


def _module_name(modules: dict[str, Any], model: Any, getter_name: str) -> str | None:
    getter = getattr(model, getter_name, None)
    try:
        module = getter() if callable(getter) else None
    except (NotImplementedError, AttributeError):
        return None
    return next((name for name, m in modules.items() if m is module), None)


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
