"""The fine-tuning lesson's fix lists, made concrete with the run's own arguments.

"Lower the learning rate" is advice; "learning_rate 3e-3 → 3e-4" is a fix. Each cause maps to an ordered list of
fixes, most likely to help first; where a hyperparameter is unknown (a log without its arguments) the fix names the
lesson's value instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from trainwatch.history import PREFERENCE

Params = Mapping[str, Any]


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


def _clip(params: Params) -> str:
    current = params.get("max_grad_norm")
    if isinstance(current, (int, float)) and 0 < current <= 0.3:
        return f"keep gradient clipping on (max_grad_norm is already {_num(current)})"
    if current == 0:
        return "clip gradients: max_grad_norm 0 (off) → 0.3"
    return "clip gradients: " + _change(params, "max_grad_norm", 0.3)


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
        "lower the learning rate 10×: " + _scaled(params, "learning_rate", 0.1, "learning_rate → a tenth of its value"),
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
        "(or use gradient_checkpointing_kwargs={'use_reentrant': False}) so gradients reach the adapters",
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
        "raise the learning rate 10×: " + _scaled(params, "learning_rate", 10, "learning_rate → 2e-4 (the QLoRA default)"),
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
    epochs, steps = params.get("num_train_epochs"), params.get("max_steps")
    if isinstance(steps, int) and steps > 0:  # max_steps, when set, is what ends the run, not the epochs
        fewer = "train fewer steps: " + _change(params, "max_steps", max(1, steps // 3))
    elif isinstance(epochs, (int, float)) and epochs > 1:
        fewer = "train fewer epochs: " + _change(params, "num_train_epochs", max(1, int(epochs) // 3))
    else:
        fewer = "train fewer epochs: stop at the best evaluation (load_best_model_at_end=True)"
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


FIXES: dict[str, Callable[[Params, str | None], list[str]]] = {
    "non_finite": _exploding,
    "lr_too_high": _exploding,
    "no_target_tokens": _no_target_tokens,
    "zero_gradients": _zero_gradients,
    "frozen_layers": _frozen_layers,
    "lr_too_low": _lr_too_low,
    "no_reward_signal": _no_reward_signal,
    "memorization": _overfitting,
    "widening_gap": _overfitting,
}


def fixes_for(cause: str, params: Params, objective: str | None = None) -> list[str]:
    """The ordered fix list for ``cause``, rendered from ``params`` (TrainingArguments fields and LoRA settings) and
    chosen by the run's ``objective`` too (no label-masking fix for a preference run)."""
    return FIXES[cause](params, objective)
