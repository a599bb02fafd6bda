"""Which trainable tensors get a gradient: a probe read at Trainer's ``on_pre_optimizer_step``, only when armed.

The logged grad norm is one number for the whole model. It cannot say that most of an adapter stopped learning
while a few tensors still carry the norm, nor which tensor's gradient went NaN first. :class:`GradientProbe` reads
the gradients of the trainable parameters themselves (for LoRA a few dozen small tensors), but only on the steps it
is armed for, so a healthy run pays nothing per step:

- the first optimizer steps (the *baseline*: which tensors receive a gradient at all, and how large), until every
  trainable tensor has had one or ``baseline_steps`` have passed;
- the step or two before a scheduled evaluation, and the first steps after each one: evaluation is where a model
  changes under the run's feet (bitsandbytes repacks 4-bit layers for an inference-only CPU kernel there);
- the step after a suspicious log: a grad norm of exactly 0, a non-finite one, or a spike.

One read is one fused reduction per device (``torch._foreach_norm``: each gradient's 2-norm, NaN or inf when an
element is) and one copy to the host, O(number of trainable tensors); only a norm of exactly 0 or inf is checked
again on its tensor, so that "no gradient" means exactly all zero and "non-finite" a NaN/inf element, never an
underflow or overflow of the squares.

The probe reads the gradients Trainer is about to apply: after accumulation, after DDP has averaged them over the
ranks (so every rank reads the same values and takes the same decision without a collective of ours) and after
clipping. Clipping scales every gradient by one factor, which keeps zeros zero and ratios between reads honest,
but a non-finite total norm spreads: a NaN turns every gradient NaN, an inf turns the finite ones to 0. So a read
with any non-finite gradient is used to localise the fault, never to judge which tensors stopped learning, and
"the first non-finite gradient" is only named when not every tensor is non-finite. A NaN born in the forward pass
(one layer's output) makes the loss NaN and so every gradient, and the optimizer then writes it into every weight:
no read after it can tell where it was born, and none is named.

Some runs cannot get a gradient to (some of) their trainable tensors at all, and the model's configuration shows why
before any step: nothing requires grad, LoRA scaled by ``lora_alpha=0``, LoRA's A and B both zero, adapters frozen by
a second ``prepare_model_for_kbit_training``, reentrant checkpointing without inputs that require grad.
:func:`trainwatch.run_inspection.gradient_path` reads those facts into a :class:`GradientPath`, and
:func:`why_no_gradient` decides the cause from them alone; the pre-flight decides it before the first step, and a
``zero_gradients`` finding decided from the logs is refined with it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from trainwatch.findings import (
    CHECKPOINTING_WITHOUT_INPUT_GRADS,
    FLAT,
    FROZEN_BY_KBIT_PREPARE,
    LORA_ALPHA_ZERO,
    LORA_WEIGHTS_ZERO,
    NOTHING_TRAINABLE,
    Finding,
)
from trainwatch.fixes import fixes_for

BASELINE = "baseline"
BEFORE_EVALUATION = "before evaluation"
AFTER_EVALUATION = "after evaluation"
CONFIRM = "confirm"
SIGN = "suspicious log"
_TOO_SMALL, _TOO_LARGE = 5e-324, sys.float_info.max
FROZEN_ON_PURPOSE = -1.0
"""The level of a tensor whose ``requires_grad`` was turned off since the run began: no longer judged."""
_PRIORITY = {BEFORE_EVALUATION: 0, BASELINE: 1, SIGN: 2, AFTER_EVALUATION: 3, CONFIRM: 4}
"""When two reasons arm the same step, the read counts as the one that judges more."""


@dataclass(frozen=True)
class Reading:
    """One armed read: every trainable tensor's gradient 2-norm (0.0: none, or an all-zero one;
    ``FROZEN_ON_PURPOSE``: its ``requires_grad`` was turned off, as progressive freezing does)."""

    step: int
    reason: str
    names: tuple[str, ...]
    levels: tuple[float, ...]
    total: float = 0.0
    """The 2-norm over all these gradients, as clipped (``max_grad_norm`` when clipping scaled them down)."""

    @property
    def without(self) -> list[int]:
        """Tensors that received no gradient (None, or exactly zero everywhere), in module order."""
        return [i for i, v in enumerate(self.levels) if v == 0.0]

    @property
    def non_finite(self) -> list[int]:
        """Tensors whose gradient holds a NaN or inf, in module order."""
        return [i for i, v in enumerate(self.levels) if not math.isfinite(v)]

    @property
    def learning(self) -> list[int]:
        return [i for i, v in enumerate(self.levels) if v > 0.0 and math.isfinite(v)]


@dataclass(frozen=True)
class Cut:
    """Trainable tensors that stopped receiving gradients (or whose gradient collapsed) while others still learn."""

    step: int
    """The optimizer step at which it was confirmed."""
    first_step: int
    """The first step at which it was seen."""
    evaluation_step: int | None
    """The evaluation it followed (None: seen elsewhere)."""
    trainable: int
    referenced: int
    """Tensors that had a gradient before, so that a change could be judged."""
    without: list[str]
    """Tensors with a gradient before and none now (None or all zero), in module order."""
    collapsed: list[str]
    """Tensors whose gradient fell more than ``collapse_factor`` times at once, in module order."""
    still_learning: list[str]
    collapse_factor: float

    @property
    def cut(self) -> list[str]:
        return self.without + [n for n in self.collapsed if n not in self.without]


@dataclass
class GradientProbe:
    """Reads the trainable parameters' gradients when armed; see the module's docstring for when that is.

    Args:
        baseline_steps: at most this many first optimizer steps are read for the baseline (LoRA's ``lora_A`` gets
            its first gradient only once ``lora_B`` has left zero, two or three steps in).
        collapse_factor: a tensor whose gradient falls more than this many times between the reads before and after
            an evaluation counts as cut off, like one whose gradient is exactly zero; at least half of the tensors
            judged must fall so for that (one tensor's gradient varies by a few times from batch to batch).
        spike_factor: a logged grad norm this many times the running level arms the probe for the next step.
        confirm_reads: reads in a row that must show the same tensors cut off before it is decided (one odd batch,
            or an expert of a mixture the router skipped once, is not a cut).
        max_names: names kept in evidence and summaries.
    """

    baseline_steps: int = 5
    collapse_factor: float = 10.0
    spike_factor: float = 10.0
    confirm_reads: int = 2
    max_names: int = 8
    max_grad_norm: float = 0.0
    """Trainer's clipping threshold (0: off); the Diagnoser sets it from the run's arguments."""
    reads: int = field(default=0, init=False)
    """Armed reads so far (the cost a run paid)."""
    latest: Reading | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """A new run (or a resumed one): the baseline is read again."""
        self._due: str | None = BASELINE
        self._baseline_reads = 0
        self._params: list[tuple[str, Any]] | None = None
        self._model_id: int | None = None
        self._recent: deque[tuple[float, ...]] = deque(maxlen=2)  # levels of the last reads judged healthy
        self._recent_step = -1
        self._ever: set[int] = set()
        self._evaluation_step: int | None = None
        self._suspect: tuple[int, set[int], set[int]] | None = None  # first step, without, collapsed
        self._confirmations = 0
        self._unclear = 0
        self._grad_level: float | None = None
        self._last_clean_log = -1
        self.latest = None
        self.problem: Reading | None = None
        """The latest read with a non-finite gradient or none at all, taken after the last healthy logged grad norm."""

    # -- arming -------------------------------------------------------------------------------------------------------
    @property
    def armed(self) -> bool:
        return self._due is not None

    def arm(self, reason: str) -> None:
        if self._due is None or _PRIORITY[reason] > _PRIORITY[self._due]:
            self._due = reason

    def evaluated(self, step: int) -> None:
        """An evaluation ran after ``step``: read the next steps (confirmation arms itself)."""
        self._evaluation_step = step
        self.arm(AFTER_EVALUATION)

    def logged(self, step: int, grad_norm: Any) -> None:
        """A logged grad norm: 0, non-finite or a spike arms the next step."""
        try:
            value = float(grad_norm)
        except (TypeError, ValueError):
            return
        if value == 0.0 or not math.isfinite(value):
            if self.problem is None or self.problem.step <= self._last_clean_log:
                self.arm(SIGN)  # once per stretch of bad grad norms: the first read after it localises the rest
            return
        if self._grad_level is not None and value > self.spike_factor * self._grad_level:
            self.arm(SIGN)
        self._last_clean_log = step
        self._grad_level = value if self._grad_level is None else 0.9 * self._grad_level + 0.1 * value

    # -- reading ------------------------------------------------------------------------------------------------------
    def read(self, model: Any, step: int) -> Reading | None:
        """Read if armed (``step``: the optimizer step about to be taken); O(trainable tensors), one host copy."""
        if self._due is None or model is None:
            return None
        reason, self._due = self._due, None
        names, levels, total = self._levels(model)
        reading = Reading(step, reason, names, levels, total)
        self.reads += 1
        self.latest = reading
        if reading.non_finite or (reading.without and not reading.learning):
            self.problem = reading
        self._judge(reading)
        return reading

    def _trainable(self, model: Any) -> list[tuple[str, Any]]:
        """The trainable tensors, in module order, as the run began (one turned off later is not judged)."""
        if self._params is None or self._model_id != id(model):
            self._params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            self._model_id = id(model)
        return self._params

    def _levels(self, model: Any) -> tuple[tuple[str, ...], tuple[float, ...], float]:
        import torch

        params = self._trainable(model)
        levels = [0.0] * len(params)
        groups: dict[Any, list[int]] = {}
        for i, (_, p) in enumerate(params):
            grad = p.grad
            if not p.requires_grad:
                levels[i] = FROZEN_ON_PURPOSE
            elif grad is not None and grad.numel():
                groups.setdefault(grad.device, []).append(i)
        for indices in groups.values():
            grads = [params[i][1].grad for i in indices]
            norms = torch._foreach_norm(grads, 2, dtype=torch.float32)  # one fused kernel per device
            for i, grad, value in zip(indices, grads, torch.stack(norms).tolist()):  # one copy to the host
                if value == 0.0 and bool(grad.any()):
                    value = _TOO_SMALL  # every square underflowed: a gradient all the same, if a tiny one
                elif value == math.inf and bool(torch.isfinite(grad).all()):
                    value = _TOO_LARGE  # the squares overflowed, not the values
                levels[i] = value
        total = math.hypot(*(v for v in levels if not v <= 0.0))  # NaN stays NaN
        return tuple(n for n, _ in params), tuple(levels), total

    # -- judging ------------------------------------------------------------------------------------------------------
    def _reference(self) -> list[float]:
        """Each tensor's level in the recent healthy reads: the smallest positive one (0.0: none had a gradient)."""
        if not self._recent:
            return []
        return [min((v for v in column if v > 0.0), default=0.0) for column in zip(*self._recent)]

    def _clipped(self, reading: Reading) -> bool:
        return self.max_grad_norm > 0 and reading.total >= self.max_grad_norm * 0.999

    def _fresh(self) -> bool:
        """Gradients may fall a lot over a run; a collapse is only judged against reads just before the evaluation."""
        return self._evaluation_step is not None and self._recent_step >= self._evaluation_step - 1

    def _judge(self, reading: Reading) -> None:
        if reading.non_finite:
            self._suspect = None  # clipping spreads a non-finite norm: which tensors learn cannot be told here
            return
        if not reading.learning:
            return  # nothing learns at all: the flat rule's zero_gradients, localised through `problem`
        reference = self._reference()
        judging_collapse = reading.reason in (AFTER_EVALUATION, CONFIRM) and self._fresh()
        if judging_collapse and self._clipped(reading):
            # Clipping scaled this step's gradients by a factor we cannot know (a spike in one tensor would make every
            # other one look collapsed): read the next step instead, a few times at most.
            if self._unclear < 3:
                self._unclear += 1
                self.arm(reading.reason)
            return
        self._unclear = 0
        without, collapsed = set(), set()
        if reference and len(reference) == len(reading.levels):
            judged = [i for i, r in enumerate(reference) if r > 0.0]
            without = {i for i in judged if reading.levels[i] == 0.0}
            fallen = {i for i in judged if 0.0 < reading.levels[i] * self.collapse_factor < reference[i]}
            most = len(without) + len(fallen) >= max(1, len(judged)) / 2
            if judging_collapse and most:
                collapsed = fallen
        cut = without | collapsed
        if cut and self._suspect is not None:  # a confirmation: only what was cut off before and still is counts
            first, was_without, was_collapsed = self._suspect
            cut &= was_without | was_collapsed
            without &= cut
            self._suspect = (first, without, cut - without)
            self._confirmations += 1
        elif cut:
            self._suspect = (reading.step, without, cut - without)
            self._confirmations = 1
        if cut:
            if self._confirmations < self.confirm_reads:
                self.arm(CONFIRM)
            return
        self._suspect = None
        self._recent.append(reading.levels)
        self._recent_step = reading.step
        self._ever.update(reading.learning)
        self._baseline_reads += 1
        if self._baseline_reads < self.baseline_steps and len(self._ever) < len(reading.levels):
            self.arm(BASELINE)

    def cut(self) -> Cut | None:
        """The cut confirmed by the latest read, once (then forgotten); None while unconfirmed or when there is none."""
        if self._suspect is None or self._confirmations < self.confirm_reads or self.latest is None:
            return None
        reading = self.latest
        first, without, collapsed = self._suspect
        self._suspect = None
        cut = without | collapsed
        judged = {i for i, r in enumerate(self._reference()) if r > 0.0}
        evaluation = self._evaluation_step
        return Cut(
            step=reading.step,
            first_step=first,
            evaluation_step=evaluation if evaluation is not None and evaluation < first else None,
            trainable=len(reading.names),
            referenced=len(judged),
            without=[reading.names[i] for i in sorted(without)],
            collapsed=[reading.names[i] for i in sorted(collapsed)],
            still_learning=[reading.names[i] for i in reading.learning if i not in cut and i in judged],
            collapse_factor=self.collapse_factor,
        )

    # -- localising a decided failure ------------------------------------------------------------------------------
    def localization(self) -> dict[str, Any] | None:
        """Evidence on the latest problem read since the last healthy logged grad norm, or None when there is none."""
        reading = self.problem
        if reading is None or reading.step <= self._last_clean_log:
            return None
        evidence: dict[str, Any] = {"gradient_probe_step": reading.step, "trainable_tensors": len(reading.names)}
        bad = reading.non_finite
        if bad:
            evidence["tensors_with_non_finite_gradient"] = len(bad)
            evidence["first_non_finite_gradient"] = reading.names[bad[0]] if len(bad) < len(reading.names) else None
        evidence["tensors_without_gradient"] = len(reading.without)
        evidence["first_without_gradient"] = reading.names[reading.without[0]] if reading.without else None
        return evidence

    def non_finite_weights(self, model: Any) -> dict[str, Any]:
        """The trainable tensors whose values are non-finite now (read once, when a non-finite loss is decided); the
        first is named only when not every one is (the optimizer spreads a NaN gradient to every weight)."""
        import torch

        params = self._trainable(model)
        tensors = [p.detach() for _, p in params if p.numel()]
        names = [n for n, p in params if p.numel()]
        bad: list[str] = []
        if tensors:
            groups: dict[Any, list[int]] = {}
            for i, t in enumerate(tensors):
                groups.setdefault(t.device, []).append(i)
            for indices in groups.values():
                norms = torch._foreach_norm([tensors[i] for i in indices], math.inf, dtype=torch.float32)
                bad += [names[i] for i, v in zip(indices, torch.stack(norms).tolist()) if not math.isfinite(v)]
        order = {n: i for i, n in enumerate(names)}
        bad.sort(key=order.__getitem__)
        return {"trainable_tensors": len(params), "tensors_with_non_finite_weights": len(bad),
                "first_non_finite_weight": bad[0] if 0 < len(bad) < len(tensors) else None}


def short_name(name: str) -> str:
    """A parameter's or module's name without PEFT's wrapping prefix."""
    return name.removeprefix("base_model.model.")


def short_names(names: Iterable[str], limit: int) -> list[str]:
    """Parameter names without PEFT's wrapping prefix, at most ``limit`` (the rest counted)."""
    names = [short_name(n) for n in names]
    return names[:limit] + ([f"... {len(names) - limit} more"] if len(names) > limit else [])


def packed_4bit_layers(model: Any) -> list[str]:
    """Modules whose 4-bit weight bitsandbytes repacked for its inference-only CPU kernel (no backward)."""
    found, seen = [], set()
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if id(weight) in seen:  # PEFT's wrapper shows its base layer's weight as its own
            continue
        seen.add(id(weight))
        if getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False):
            found.append(name)
    return found


# -- findings -------------------------------------------------------------------------------------------------------
def sharded(args: Any) -> bool:
    """DeepSpeed or FSDP: each rank holds a shard of the gradients (or none in ``.grad``): the probe stays off."""
    env = os.environ
    return bool(
        getattr(args, "deepspeed", None) or getattr(args, "fsdp", None)
        or env.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true")
        or env.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")
    )


def cut_finding(cut: Cut, model: Any, params: Any, limit: int) -> Finding:
    """"flat"/``frozen_layers``: trainable tensors that stopped receiving gradients while others still learn."""
    after = f" after the evaluation at step {cut.evaluation_step}" if cut.evaluation_step is not None else ""
    names = ", ".join(short_names(cut.cut, 3))
    if cut.collapsed:
        what = (f"stopped learning{after}: each gradient is 0 or fell more than {cut.collapse_factor:g}× at once "
                f"(step {cut.first_step} and on)")
    else:
        what = f"stopped receiving gradients{after} (step {cut.first_step} and on)"
    summary = f"{len(cut.cut)} of {cut.trainable} trainable tensors {what}: {names}; {len(cut.still_learning)} still learn"
    if cut.referenced < cut.trainable:
        summary += f", {cut.trainable - cut.referenced} had no gradient yet to compare with"
    packed = packed_4bit_layers(model) if model is not None and getattr(model, "training", True) else []
    if packed:
        summary += (f"; bitsandbytes repacked {len(packed)} 4-bit layers for its inference-only CPU kernel, which has "
                    "no backward (AVX512-BF16 CPU)")
    evidence = {
        "decided_by": "gradient probe",
        "evaluation_step": cut.evaluation_step,
        "first_seen_step": cut.first_step,
        "trainable_tensors": cut.trainable,
        "tensors_with_gradient_before": cut.referenced,
        "tensors_cut_off": len(cut.cut),
        "tensors_without_gradient": len(cut.without),
        "tensors_collapsed": len(cut.collapsed),
        "collapse_factor": cut.collapse_factor,
        "cut_off": short_names(cut.cut, limit),
        "still_learning": short_names(cut.still_learning, limit),
        "packed_4bit_layers": len(packed),
    }
    finding = Finding(FLAT, "frozen_layers", cut.step, summary, evidence, fixes_for("frozen_layers", params))
    if cut.without or packed:
        return finding  # exactly no gradient, or the 4-bit CPU kernel seen: certain
    return dataclasses.replace(finding, confidence="medium")  # a collapse of unknown cause


# -- why no gradient can reach the adapters: read from the model before a step, decided here ----------------------
@dataclass(frozen=True)
class GradientPath:
    """What decides, before any step, whether a backward pass can reach the trainable tensors: read from the model by
    :func:`trainwatch.run_inspection.gradient_path`, plain values, so that :func:`why_no_gradient` is pure."""

    parameters: int
    """Parameter tensors in the model."""
    trainable: tuple[str, ...] = ()
    """Tensors with ``requires_grad``, in module order."""
    adapters: tuple[str, ...] = ()
    """The LoRA layers' own tensors (``lora_A``, ``lora_B``, DoRA's magnitude), trainable or not."""
    adapters_for_inference: bool = False
    """PEFT's config says ``inference_mode`` (``PeftModel.from_pretrained`` without ``is_trainable=True``)."""
    quantized: bool = False
    """A 4- or 8-bit base."""
    lora_r: float | None = None
    lora_alpha: float | None = None
    zero_scaled: tuple[str, ...] = ()
    """``lora_A``/``lora_B`` tensors of layers whose scaling (``lora_alpha / r``) is 0."""
    zero_lora: tuple[str, ...] = ()
    """``lora_A``/``lora_B`` tensors of layers in which both are all zero."""
    reentrant_layers: tuple[str, ...] = ()
    """Layers checkpointed with ``use_reentrant=True`` (torch's default when it is not given)."""
    inputs_require_grad: bool = True
    """Whether the input embeddings' output may require grad: a trainable embedding, or a forward hook on it (such as
    the one ``enable_input_require_grads()`` adds)."""
    in_reentrant_layers: tuple[str, ...] = ()
    """Trainable tensors inside the reentrant layers."""
    elsewhere: tuple[str, ...] = ()
    """Trainable tensors neither inside them nor in the output embeddings (which run after every layer)."""


@dataclass(frozen=True)
class Blockage:
    """Why (some of) the trainable tensors can receive no gradient, and which."""

    cause: str
    summary: str
    tensors: tuple[str, ...]
    """The tensors that can receive none, in module order (empty: there is nothing trainable)."""
    evidence: dict[str, Any]


def why_no_gradient(path: GradientPath, limit: int = 8) -> Blockage | None:
    """The cause, decided only where the configuration leaves no doubt (None: no gradient path is blocked).

    - nothing requires grad: ``frozen_by_kbit_prepare`` when the frozen tensors include LoRA's on a 4/8-bit base that
      PEFT does not mark for inference (``prepare_model_for_kbit_training`` freezes every parameter, so called after
      ``get_peft_model`` it freezes the adapters), else ``nothing_trainable``;
    - every trainable LoRA tensor sits in a layer scaled by 0 (``lora_alpha=0``): ``lora_alpha_zero``; or in a layer
      whose ``lora_A`` and ``lora_B`` are both zero (each one's gradient is the other's product, 0): ``lora_weights_zero``;
    - trainable tensors inside layers checkpointed reentrantly while the input embeddings' output does not require
      grad and nothing trainable runs before them: the reentrant checkpoint passes them no gradient
      (``checkpointing_without_input_grads``).
    """
    count = {"trainable_tensors": len(path.trainable), "parameter_tensors": path.parameters}
    if not path.trainable:
        frozen = len(path.adapters)
        if frozen and path.quantized and not path.adapters_for_inference:
            summary = (f"none of the {path.parameters} parameter tensors requires grad, the {frozen} LoRA tensors "
                       "included, on a 4/8-bit base: prepare_model_for_kbit_training freezes every parameter, so "
                       "called after get_peft_model (the model prepared twice) it froze the adapters")
            return Blockage(FROZEN_BY_KBIT_PREPARE, summary, path.adapters,
                            {**count, "frozen_adapter_tensors": frozen, "first_frozen": short_name(path.adapters[0])})
        if frozen:
            how = ("PEFT loaded them for inference (inference_mode: PeftModel.from_pretrained without is_trainable=True)"
                   if path.adapters_for_inference else "they were frozen")
            summary = f"none of the {path.parameters} parameter tensors requires grad, the {frozen} LoRA tensors included: {how}"
        else:
            summary = f"none of the {path.parameters} parameter tensors requires grad, and the model has no adapters"
        return Blockage(NOTHING_TRAINABLE, summary, (), {**count, "frozen_adapter_tensors": frozen,
                                                        "adapters_for_inference": path.adapters_for_inference})
    adapters = set(path.adapters)
    lora = [n for n in path.trainable if n in adapters]
    if lora and set(lora) <= set(path.zero_scaled):
        alpha = f"lora_alpha={_num(path.lora_alpha)}, r={_num(path.lora_r)}" if path.lora_alpha is not None else "scaling 0"
        summary = (f"LoRA's scaling lora_alpha / r is 0 ({alpha}): every adapter's output is multiplied by 0, so none "
                   f"of its {len(lora)} tensors gets a gradient, first {short_name(lora[0])}")
        return Blockage(LORA_ALPHA_ZERO, summary, tuple(lora), {
            **count, "lora_alpha": path.lora_alpha, "lora_r": path.lora_r, "zero_scaled_tensors": len(lora),
            "first_without_gradient": short_name(lora[0]), "blocked": short_names(lora, limit)})
    if lora and set(lora) <= set(path.zero_lora):
        summary = (f"every LoRA layer's lora_A and lora_B are both all zero: the gradient of each is the other's "
                   f"product, 0, so none of the {len(lora)} adapter tensors ever leaves zero, first {short_name(lora[0])}")
        return Blockage(LORA_WEIGHTS_ZERO, summary, tuple(lora), {
            **count, "zero_adapter_tensors": len(lora), "first_without_gradient": short_name(lora[0]),
            "blocked": short_names(lora, limit)})
    inside = path.in_reentrant_layers
    if inside and not path.inputs_require_grad and not path.elsewhere:
        layers = path.reentrant_layers
        summary = (f"{len(inside)} of {len(path.trainable)} trainable tensors sit in the {len(layers)} layers "
                   f"checkpointed with use_reentrant=True ({short_name(layers[0])}, ...), whose inputs do not require grad "
                   "(frozen input embeddings, no enable_input_require_grads()): a reentrant checkpoint passes them no "
                   f"gradient, first {short_name(inside[0])}")
        return Blockage(CHECKPOINTING_WITHOUT_INPUT_GRADS, summary, inside, {
            **count, "reentrant_layers": len(layers), "tensors_in_reentrant_layers": len(inside),
            "first_without_gradient": short_name(inside[0]), "blocked": short_names(inside, limit)})
    return None


def blockage_finding(blockage: Blockage, step: int, params: Any, decided_by: str) -> Finding:
    """"flat"/``blockage.cause``, decided at ``step`` from the model's configuration (``decided_by``)."""
    evidence = {"decided_by": decided_by, **blockage.evidence}
    return Finding(FLAT, blockage.cause, step, blockage.summary, evidence, fixes_for(blockage.cause, params))


def refined(finding: Finding, blockage: Blockage | None, params: Any) -> Finding:
    """A ``zero_gradients`` finding with the cause the model's configuration shows, its evidence and its fixes
    (unchanged when there is none)."""
    if blockage is None:
        return finding
    return dataclasses.replace(
        finding, cause=blockage.cause, summary=f"{finding.summary}; {blockage.summary}",
        evidence={**finding.evidence, **blockage.evidence}, fixes=fixes_for(blockage.cause, params),
    )


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def localized(finding: Finding, extra: dict[str, Any]) -> Finding:
    """``finding`` with the probe's evidence (``extra``) on the first tensor concerned, told in its summary too."""
    notes = []
    total = extra.get("trainable_tensors")
    if extra.get("tensors_with_non_finite_gradient"):
        bad, first = extra["tensors_with_non_finite_gradient"], extra.get("first_non_finite_gradient")
        notes.append(f"first non-finite gradient in {short_names([first], 1)[0]} ({bad} of {total} trainable tensors)"
                     if first else f"every one of the {total} trainable tensors has a non-finite gradient")
    elif finding.kind == FLAT and extra.get("tensors_without_gradient"):
        none, first = extra["tensors_without_gradient"], extra.get("first_without_gradient")
        notes.append(f"{none} of {total} trainable tensors receive no gradient, first {short_names([first], 1)[0]}")
    if "gradient_probe_step" in extra and notes:
        notes[-1] += f" (gradient probe at step {extra['gradient_probe_step']})"
    if extra.get("tensors_with_non_finite_weights"):
        bad, first = extra["tensors_with_non_finite_weights"], extra.get("first_non_finite_weight")
        notes.append(f"first non-finite weight in {short_names([first], 1)[0]} ({bad} of {total} trainable tensors)"
                     if first else f"every one of the {total} trainable tensors has non-finite weights")
    summary = finding.summary + ("; " + "; ".join(notes) if notes else "")
    evidence = {**finding.evidence, **{k: v for k, v in extra.items() if k not in finding.evidence}}
    return dataclasses.replace(finding, summary=summary, evidence=evidence)
