"""The fine-tuning lesson's fix lists, made concrete with the run's own arguments.

"Lower the learning rate" is advice; "learning_rate 3e-3 → 3e-4" is a fix. Each cause maps to an ordered list of
fixes, most likely to help first; where a hyperparameter is unknown (a log without its arguments) the fix names the
lesson's value instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from trainwatch.history import PREFERENCE

Params = Mapping[str, Any]

CLIP = 0.3
"""The QLoRA lesson's ``max_grad_norm``, the clipping an explosion's fix turns on."""
LORA_RATES = (1e-4, 3e-4)
"""The lesson's learning rates for LoRA/QLoRA, as the pre-flight's learning-rate check has them."""
LORA_RATE = 2e-4
"""The usual LoRA/QLoRA rate: a 10× change that would leave a LoRA run's rate still more than ``RATE_MARGIN``×
beyond :data:`LORA_RATES` goes straight to it (measured on the reference run: a rate of 100 that exploded explodes
at 10 and at 1 as well, with clipping)."""
RATE_MARGIN = 10.0


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _change(params: Params, name: str, target: Any, label: str | None = None) -> str:
    """``name current → target``, or ``name → target`` when the current value is unknown."""
    label = label or name
    current = params.get(name)
    if current is None:
        return f"{label} → {_num(target)}"
    return f"{label} {_num(current)} → {_num(target)}"


def _scaled(params: Params, name: str, factor: float, default_hint: str) -> str:
    current = params.get(name)
    if isinstance(current, (int, float)) and current > 0:
        return f"{name} {_num(current)} → {_num(float(f'{current * factor:.3g}'))}"
    return default_hint


def learning_rate_fix(params: Params, factor: float, objective: str | None = None) -> float | None:
    """The learning rate that "``factor``× the learning rate" sets: the current one × ``factor`` (3 significant
    digits), or :data:`LORA_RATE` for a LoRA run (``lora_r`` known, a per-token loss) that this would leave more than
    :data:`RATE_MARGIN`× beyond :data:`LORA_RATES` on the same side. None when the current rate is unknown."""
    current = params.get("learning_rate")
    if not isinstance(current, (int, float)) or not math.isfinite(current) or current <= 0:
        return None
    rate = float(f"{current * factor:.3g}")
    low, high = LORA_RATES
    if (
        "lora_r" in params
        and objective is None
        and ((factor < 1 and rate > high * RATE_MARGIN) or (factor > 1 and rate < low / RATE_MARGIN))
    ):
        return LORA_RATE
    return rate


def _rate(params: Params, factor: float, default_hint: str, objective: str | None = None) -> str:
    rate = learning_rate_fix(params, factor, objective)
    if rate is None:
        return default_hint
    current = params["learning_rate"]
    text = f"learning_rate {_num(current)} → {_num(rate)}"
    scaled = float(f"{current * factor:.3g}")
    if rate != scaled:
        low, high = LORA_RATES
        side = f"over {RATE_MARGIN:g}× the usual" if factor < 1 else f"under 1/{RATE_MARGIN:g} of the usual"
        step = "a tenth" if factor == 0.1 else f"{factor:g}×"
        text += f", the usual rate for LoRA/QLoRA ({step}, {_num(scaled)}, would still be {side} {low:g}–{high:g})"
    return text


def clip_fix(params: Params) -> float | None:
    """The ``max_grad_norm`` an explosion's fix sets: :data:`CLIP`, unless clipping is already on at most that."""
    current = params.get("max_grad_norm")
    return None if isinstance(current, (int, float)) and 0 < current <= CLIP else CLIP


def _clip(params: Params) -> str:
    current = params.get("max_grad_norm")
    if clip_fix(params) is None:
        return f"keep gradient clipping on (max_grad_norm is already {_num(current)})"
    if current == 0:
        return f"clip gradients: max_grad_norm 0 (off) → {CLIP}"
    return "clip gradients: " + _change(params, "max_grad_norm", CLIP)


def _warmup(params: Params) -> str:
    current = params.get("warmup_steps")
    if isinstance(current, (int, float)) and current >= 100:
        return f"warm up longer: warmup_steps {_num(current)} → {_num(2 * current)}"
    return "warm up longer: " + _change(params, "warmup_steps", 100)


def _exploding(params: Params, objective: str | None = None) -> list[str]:
    data = (
        "look at the pairs: chosen and rejected swapped, identical, or cut away by max_length"
        if objective == PREFERENCE
        else "look for bad examples: empty labels, extremely long texts, corrupted records"
    )
    return [
        "lower the learning rate 10×: " + _rate(params, 0.1, "learning_rate → a tenth of its value", objective),
        _clip(params),
        _warmup(params),
        data,
    ]


def _no_target_tokens(params: Params, objective: str | None = None) -> list[str]:
    return [
        "check the label masking: print one batch's labels and count the examples with > 0 target tokens "
        "(labels != -100); every example here has none",
        "make sure the response is not cut away: max sequence length must leave room for the whole answer, "
        "and padding must not replace the real EOS label",
        "if you mask the prompt yourself, mask only the prompt tokens, not the response",
    ]


def _zero_gradients(params: Params, objective: str | None = None) -> list[str]:
    return [
        "check that parameters are trainable: model.print_trainable_parameters() must show > 0 trainable",
        "with gradient checkpointing on a frozen base, call model.enable_input_require_grads() "
        "(or use activation_checkpointing_kwargs={'use_reentrant': False}) so gradients reach the adapters",
        "QLoRA on a CPU: bitsandbytes may switch 4-bit layers to an inference-only packed path during evaluation "
        "(AVX512-BF16 CPUs), after which every gradient is 0; keep 4-bit weights out of that path, or evaluate "
        "less often / not at all on the CPU",
        "check that no torch.no_grad()/detach() sits between the loss and the trainable weights, and that LoRA's "
        "scaling lora_alpha / r is not 0" + (f" (lora_alpha is {_num(params['lora_alpha'])})" if "lora_alpha" in params else ""),
        "if the loss sits exactly at a uniform guess (ln vocab_size), one update blew the weights into saturation: "
        + _scaled(params, "learning_rate", 0.1, "lower the learning rate 10×"),
    ]


def _lr_too_low(params: Params, objective: str | None = None) -> list[str]:
    if objective == PREFERENCE:
        beta = params.get("beta")
        return [
            "raise the learning rate 10×: "
            + _scaled(params, "learning_rate", 10, "learning_rate → 5e-6 (DPO, full fine-tuning) or 5e-5 (with LoRA)"),
            "check that chosen and rejected really differ (a pair with the same answer teaches nothing), and that "
            "beta is not tiny" + (f" (beta is {_num(beta)}; 0.1 is usual)" if isinstance(beta, (int, float)) else ""),
        ]
    return [
        "raise the learning rate 10×: " + _rate(params, 10, "learning_rate → 2e-4 (the QLoRA default)", objective),
        "check the label masking: print labels and count examples with > 0 target tokens",
    ]


def _no_reward_signal(params: Params, objective: str | None = None) -> list[str]:
    generations = params.get("num_generations")
    temperature = params.get("temperature")
    return [
        "make the reward discriminate: every completion of every group got the same reward, so the reward function "
        "is too strict (nothing earns anything) or too easy (everything does); score a few sampled completions by hand",
        "more completions per prompt, so a group is likelier to differ: "
        + (_change(params, "num_generations", 2 * generations) if isinstance(generations, int) else "num_generations → 8"),
        "more varied completions: "
        + (f"temperature {_num(temperature)} → 1.0" if isinstance(temperature, (int, float)) and temperature < 1.0
           else "sample with temperature ≥ 1.0"),
        "easier prompts, or a partial-credit reward, so that some completions of each group can earn it",
    ]


def _overfitting(params: Params, objective: str | None = None) -> list[str]:
    shorter = shorter_fix(params)
    if shorter is None:
        fewer = "train fewer epochs: stop at the best evaluation (load_best_model_at_end=True)"
    else:
        name, value = shorter
        fewer = f"train fewer {'steps' if name == 'max_steps' else 'epochs'}: " + _change(params, name, value)
    rank = params.get("lora_r")
    lower_rank = "lower the LoRA rank: " + (
        f"lora r {rank} → {max(1, int(rank) // 2)}" if isinstance(rank, (int, float)) and rank > 1 else "r 8 → 4"
    )
    dropout = params.get("lora_dropout")
    more_dropout = "more LoRA dropout: " + (
        f"lora_dropout {_num(dropout)} → 0.1" if isinstance(dropout, (int, float)) and dropout < 0.1
        else "lora_dropout → 0.1–0.2"
    )
    decay = params.get("weight_decay")
    more_decay = "regularise: " + (
        _change(params, "weight_decay", 0.01) if not isinstance(decay, (int, float)) or decay < 0.01
        else f"weight_decay {_num(decay)} → {_num(2 * decay)}"
    )
    return ["more (or more varied) training data", fewer, more_dropout, lower_rank, more_decay]


def shorter_fix(params: Params) -> tuple[str, int] | None:
    """Overfitting's "train fewer epochs" as ``(argument, value)``: a third of ``max_steps`` when it is set (it is what
    ends the run), else of ``num_train_epochs``; None when there is no more than one epoch to cut."""
    epochs, steps = params.get("num_train_epochs"), params.get("max_steps")
    if isinstance(steps, int) and steps > 0:
        return "max_steps", max(1, steps // 3)
    if isinstance(epochs, (int, float)) and epochs > 1:
        return "num_train_epochs", max(1, int(epochs) // 3)
    return None


def _frozen_layers(params: Params, objective: str | None = None) -> list[str]:
    every = params.get("eval_steps")
    less_often = (
        f"eval_steps {_num(every)} → {_num(every * 10)}" if isinstance(every, (int, float)) and every >= 1
        else "eval_strategy 'no', then trainer.evaluate() once training is done"
    )
    return [
        "QLoRA on a CPU with AVX512-BF16: the first evaluation makes bitsandbytes repack every 4-bit layer for an "
        "inference-only kernel with no backward, and the gradients of the adapters in front of them collapse. Before "
        "training, clear the "
        "flag that allows it on every 4-bit layer, as the reference run does (trainwatch.train."
        "keep_4bit_layers_trainable_on_cpu(model)): for m in model.modules(): if isinstance(m, "
        "bitsandbytes.nn.Linear4bit): m.support_avx512bf16_for_cpu = False",
        "or evaluate less often on that CPU: " + less_often + " (a checkpoint saved right after an evaluation unpacks "
        "the layers again, but not losslessly: each round trip moves the 4-bit base weights by about 0.2 %)",
        "otherwise find what cut these tensors off: a callback or hook that sets requires_grad=False or detaches a "
        "module's output, a torch.no_grad()/inference_mode() block left around the forward pass, code that behaves "
        "differently after model.eval()",
        "in a mixture of experts, an expert the router no longer chooses gets no gradient: check the router's load "
        "balancing (its auxiliary loss coefficient)",
    ]


def _lora_alpha(params: Params) -> str:
    """``lora_alpha current → 2 × r``: the usual scaling of 2."""
    rank = params.get("lora_r")
    if isinstance(rank, (int, float)) and rank > 0:
        return _change(params, "lora_alpha", 2 * rank) + f" (2 × r, r = {_num(rank)})"
    return _change(params, "lora_alpha", 16) + " (2 × r for r = 8)"


def _nothing_trainable(params: Params, objective: str | None = None) -> list[str]:
    rank = params.get("lora_r") if isinstance(params.get("lora_r"), (int, float)) else 8
    return [
        (
            f"give the model adapters to train: model = get_peft_model(model, LoraConfig(r={_num(rank)}, "
            f"lora_alpha={_num(2 * rank)}, target_modules='all-linear', task_type='CAUSAL_LM')), then "
            "model.print_trainable_parameters() must show > 0 trainable"
        ),
        (
            "training an adapter you loaded: PeftModel.from_pretrained(base, path, is_trainable=True) (without it "
            "PEFT loads the adapter for inference, frozen)"
        ),
        "if you froze parameters yourself, unfreeze the ones to train (p.requires_grad_(True)) before building the Trainer",
    ]


def _frozen_by_kbit_prepare(params: Params, objective: str | None = None) -> list[str]:
    return [
        (
            "prepare the model once, before adding the adapters: model = prepare_model_for_kbit_training(model), "
            "then model = get_peft_model(model, lora_config); calling it on the PEFT model freezes every parameter, "
            "adapters included"
        ),
        (
            "or make the adapters trainable again: for name, p in model.named_parameters(): "
            "p.requires_grad_('lora_' in name); then model.print_trainable_parameters() must show > 0 trainable"
        ),
    ]


def _lora_alpha_zero(params: Params, objective: str | None = None) -> list[str]:
    return [
        "set LoRA's alpha: " + _lora_alpha(params) + "; the adapters' output is scaled by lora_alpha / r, and at 0 "
        "they neither change the model nor get a gradient",
        "check alpha_pattern and any set_scale()/scale_layer(0) call that turns an adapter's scaling to 0",
    ]


def _lora_weights_zero(params: Params, objective: str | None = None) -> list[str]:
    return [
        (
            "start from freshly initialised adapters: LoraConfig(init_lora_weights=True) draws lora_A at random and "
            "sets lora_B to 0; with both at 0 neither ever gets a gradient"
        ),
        "if you loaded the adapter from disk, check the file: an adapter saved with every weight 0 trains nothing",
    ]


def _checkpointing_without_input_grads(params: Params, objective: str | None = None) -> list[str]:
    return [
        (
            "checkpoint without reentrancy: activation_checkpointing_kwargs={'use_reentrant': True} → "
            "{'use_reentrant': False} (TrainingArguments, or model.activation_checkpointing_enable(...))"
        ),
        (
            "or keep it reentrant and make the inputs require grad: model.enable_input_require_grads() after "
            "enabling checkpointing (and after anything that replaces the input embeddings)"
        ),
    ]


FIXES: dict[str, Callable[[Params, str | None], list[str]]] = {
    "non_finite": _exploding,
    "lr_too_high": _exploding,
    "no_target_tokens": _no_target_tokens,
    "zero_gradients": _zero_gradients,
    "frozen_layers": _frozen_layers,
    "nothing_trainable": _nothing_trainable,
    "frozen_by_kbit_prepare": _frozen_by_kbit_prepare,
    "lora_alpha_zero": _lora_alpha_zero,
    "lora_weights_zero": _lora_weights_zero,
    "checkpointing_without_input_grads": _checkpointing_without_input_grads,
    "lr_too_low": _lr_too_low,
    "no_reward_signal": _no_reward_signal,
    "memorization": _overfitting,
    "widening_gap": _overfitting,
}


def fixes_for(cause: str, params: Params, objective: str | None = None) -> list[str]:
    """The ordered fix list for ``cause``, rendered from ``params`` (TrainingArguments fields and LoRA settings) and
    chosen by the run's ``objective`` too (no label-masking fix for a preference run)."""
    return FIXES[cause](params, objective)


def argument_changes(cause: str, params: Params, objective: str | None = None) -> dict[str, Any]:
    """The fix a repair applies for ``cause``, as ``{argument: new value}``, with the values its fix list shows: for
    an explosion the lowered learning rate and clipping, for a rate too low the raised one, for overfitting fewer
    epochs (or steps). Empty when no argument fixes the cause (no target tokens, zero gradients, frozen layers, no
    reward signal) or the run's value is unknown."""
    if cause in ("non_finite", "lr_too_high", "lr_too_low"):
        rate = learning_rate_fix(params, 10 if cause == "lr_too_low" else 0.1, objective)
        if rate is None:
            return {}
        clip = clip_fix(params) if cause != "lr_too_low" else None
        return {"learning_rate": rate} | ({"max_grad_norm": clip} if clip is not None else {})
    if cause in ("memorization", "widening_gap"):
        shorter = shorter_fix(params)
        return dict([shorter]) if shorter else {}
    return {}
