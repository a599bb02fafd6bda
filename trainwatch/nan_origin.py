"""Where a NaN or inf is born in the forward pass: the step's batch replayed module by module, before the update.

A NaN born in one layer's output makes the loss NaN and so every gradient (the backward starts from it), and the
optimizer then writes it into every weight: neither the gradients nor the weights read after that can say where it
was born. The forward pass can, run again on the same batch while the weights are still the ones that produced it.

:class:`LossWatch` keeps, for the optimizer step under way, a reference to each training micro-batch's inputs and to
the loss the model returned (a forward hook on the model: no copy, no host read). At Trainer's
``on_pre_optimizer_step`` (after the backward, before the update) :meth:`LossWatch.check` reads those losses to the
host; only when one is non-finite does :func:`replay` run that micro-batch again, without gradients, with a
hook on every module, and name the first module to finish with a non-finite output: the innermost one, since a
module finishes after its children. That happens once a run (the first NaN is the one that was born; the watch is
then removed), and the random state is restored after it (dropout draws masks), so the run goes on as it would
have.

Only a model that computes its own loss is watched (Trainer's default, with labels in the batch): a loss computed
outside it (``compute_loss_func``, DPO's) is no output of the model, and a NaN born there is no module's. The
caller keeps sharded models (DeepSpeed, FSDP) away: their forward pass gathers shards from every rank, and one rank
replaying alone would wait for the others forever; and compiled ones (``torch_compile``): a Python hook in the
forward pass breaks the compiled graph.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainwatch.findings import Finding
from trainwatch.gradients import short_name

logger = logging.getLogger("trainwatch")


@dataclass(frozen=True)
class Origin:
    """What the replay of the first non-finite loss's micro-batch found."""

    step: int
    """The optimizer step whose micro-batch was replayed."""
    module: str | None
    """The first module to finish with a non-finite output (``""``: the model itself, i.e. its loss, every layer's
    output finite); None when no output was non-finite: the NaN did not come back."""
    inputs_finite: bool = True
    """That module's inputs were finite."""
    weights_finite: bool = True
    """That module's parameters (its children's included) were finite."""

    @property
    def born_in(self) -> str | None:
        """The module the NaN/inf was born in: finite inputs and weights, a non-finite output."""
        return self.module if self.module is not None and self.inputs_finite and self.weights_finite else None

    def evidence(self) -> dict[str, Any]:
        return {
            "nan_replay_step": self.step,
            "first_non_finite_output": _display(self.module) if self.module is not None else None,
            "non_finite_born_in": _display(self.born_in) if self.born_in is not None else None,
        }

    def describe(self) -> str:
        """The finding's summary note."""
        replayed = f"step {self.step}'s batch replayed before the update"
        if self.module is None:
            return f"{replayed}: every module's output finite, the NaN/inf did not come back (a random draw?)"
        name = _display(self.module)
        if self.born_in == "":
            return f"the NaN/inf is born in {name}: every module inside it returns finite values ({replayed})"
        if self.born_in is not None:
            return f"the NaN/inf is born in {name}: its inputs and weights are finite, its output is not ({replayed})"
        why = (
            "its weights are non-finite" if not self.weights_finite else "its input already was (born between modules)"
        )
        return f"first non-finite output: {name}, {why} ({replayed})"

    def attached_to(self, finding: Finding) -> Finding:
        """A ``non_finite`` finding with this replay's evidence and note, and first among its fixes the module to
        look into, when one was found."""
        fixes = list(finding.fixes)
        name = _display(self.module) if self.module is not None else ""
        if self.born_in == "":
            fixes.insert(
                0,
                "find why the loss is NaN/inf while every layer's output is finite: a batch without a "
                "single target token (0/0 in the mean over tokens), a log of 0 in a custom loss",
            )
        elif self.born_in is not None:
            fixes.insert(
                0,
                f"find why {name} returns NaN/inf on finite inputs: an overflow (fp16 tops out at 65504: "
                "train in bf16), a division by zero, a log or sqrt of 0 or of a negative number; call it "
                f"on step {self.step}'s batch to see it",
            )
        elif self.module is not None and self.weights_finite:
            fixes.insert(
                0,
                f"look at the code between the modules around {name} (its parent's forward) and at the "
                "batch: its input is already non-finite",
            )
        return dataclasses.replace(
            finding,
            summary=f"{finding.summary}; {self.describe()}",
            evidence={**finding.evidence, **self.evidence()},
            fixes=fixes,
        )


class LossWatch:
    """The losses of the optimizer step under way, with their micro-batches, to replay the first non-finite one.

    Costs one forward hook call per training micro-batch and a host read of its loss (``check``): about 2 µs a step
    on a CPU, measured in benchmarks/gradient_probe.py."""

    def __init__(self, model: Any, micro_batches: int = 1) -> None:
        """``micro_batches``: per optimizer step (gradient accumulation); no more are ever kept, so a watch left on
        a model after its run (a crash before ``close``) holds one step's inputs at most."""
        self.model = model
        self.origin: Origin | None = None
        self._batches: deque[tuple[tuple[Any, ...], dict[str, Any], Any]] = deque(maxlen=max(1, micro_batches))
        self._handle: Any = model.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        """A training forward pass (evaluation and the replay itself run without gradients: not kept)."""
        import torch

        loss = output.get("loss") if isinstance(output, Mapping) else None
        if isinstance(loss, torch.Tensor) and module.training and torch.is_grad_enabled():
            self._batches.append((args, kwargs, loss.detach()))

    def check(self, step: int) -> bool:
        """At ``on_pre_optimizer_step`` of ``step``: whether a loss of this step was non-finite. Then its micro-batch
        was replayed (``origin`` holds what that found, unless the replay failed) and the watch is removed. The
        references to this step's micro-batches are dropped either way."""
        batches = list(self._batches)
        self._batches.clear()
        if not batches:
            return False
        finite = [math.isfinite(loss.item() if loss.numel() == 1 else loss.sum().item()) for _, _, loss in batches]
        if all(finite):  # a host read per micro-batch, each waiting only for the first: ~1 µs on a CPU
            return False
        args, kwargs, _ = batches[finite.index(False)]
        self.close()
        try:
            self.origin = replay(self.model, args, kwargs, step)
        except Exception as error:  # noqa: BLE001 - out of memory, a model that cannot run twice: no origin, no harm
            logger.warning(
                "trainwatch: could not replay step %d's batch to find where the NaN is born (%r)", step, error
            )
        return True

    def close(self) -> None:
        self._batches.clear()
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def replay(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any], step: int) -> Origin:
    """Run ``model(*args, **kwargs)`` again without gradients and with the random state restored after it, and
    find the first module to finish with a non-finite output."""
    import torch

    found: list[Origin] = []
    names = {module: name for name, module in model.named_modules()}

    def inspect(module: Any, inputs: Any, output: Any) -> None:
        if not found and not _finite(output):
            weights = list(module.parameters())
            found.append(Origin(step, names[module], _finite(inputs), _finite(weights)))

    handles = [module.register_forward_hook(inspect) for module in names]
    cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=cuda), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. reentrant checkpointing's "no input requires grad", true here
            model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else Origin(step, None)


def _finite(value: Any) -> bool:
    """No NaN or inf in any floating-point tensor of ``value`` (a tensor, or nested tuples, lists and mappings)."""
    import torch

    if isinstance(value, torch.Tensor):
        return not (value.is_floating_point() or value.is_complex()) or bool(torch.isfinite(value).all())
    if isinstance(value, Mapping):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return all(_finite(v) for v in value)
    return True


def _display(name: str) -> str:
    """A module's name as the findings name tensors; the model itself (``""``) by its role."""
    return short_name(name) or "the model's loss computation"
