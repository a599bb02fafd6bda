"""Where a NaN is born (trainwatch/nan_origin.py): the first non-finite loss's batch replayed before the update.

On real tiny Trainer runs: a NaN injected into one module's output at a known step is named, in a full fine-tune and
in a LoRA adapter; a healthy run replays nothing and leaves no hook behind; a loss computed outside the model is
not watched. Plus the watch and the replay alone, on hand-made modules: the micro-batch replayed, a NaN born in the
model's own loss, already in a module's input or weights, or that does not come back; the random state kept.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from trainwatch import Diagnoser
from trainwatch.findings import Finding
from trainwatch.nan_origin import LossWatch, Origin, replay
from trainwatch.testing import Progressions, tiny_model, tiny_trainer


class NaNFrom(TrainerCallback):
    """From optimizer step ``step`` on, the module ``name`` returns NaN: a forward pass gone non-finite there."""

    def __init__(self, step: int, name: str) -> None:
        self.step, self.name, self.handle = step, name, None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step and self.handle is None:
            module = model.get_submodule(self.name)
            self.handle = module.register_forward_hook(lambda module, inputs, out: out * math.nan)


def test_a_nan_injected_into_a_lora_layer_is_named_at_its_step(tmp_path) -> None:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_model(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        max_steps=8,
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        seed=0,
    )
    injected = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.default"
    diagnoser = Diagnoser(stop_on=["exploding"])
    trainer = Trainer(
        model=model, args=args, train_dataset=Progressions(64), callbacks=[NaNFrom(3, injected), diagnoser]
    )
    trainer.train()
    [finding] = diagnoser.diagnoses
    assert (finding.kind, finding.cause, finding.step) == ("exploding", "non_finite", 3)
    named = "model.layers.1.self_attn.v_proj.lora_B.default"  # the innermost module: its parent v_proj comes after
    assert finding.evidence["non_finite_born_in"] == finding.evidence["first_non_finite_output"] == named
    assert finding.evidence["nan_replay_step"] == 3
    assert f"the NaN/inf is born in {named}: its inputs and weights are finite" in finding.summary
    assert finding.fixes[0].startswith(f"find why {named} returns NaN/inf on finite inputs")
    assert not model._forward_hooks  # the watch removed itself after its one replay


def test_a_healthy_run_replays_nothing_and_leaves_no_hook(tmp_path) -> None:
    diagnoser = Diagnoser()
    trainer = tiny_trainer("healthy", str(tmp_path), callbacks=[diagnoser], report_to=[], max_steps=10)
    trainer.train()
    assert diagnoser.verdict == "healthy" and diagnoser._origin is None
    assert not trainer.model._forward_hooks


def test_a_loss_computed_outside_the_model_is_not_watched(tmp_path) -> None:
    """The scenario's hand-written loss (compute_loss_func): the model returns no loss, so no batch is kept and the
    finding says nothing of an origin (the gradient probe still reads what it can)."""
    diagnoser = Diagnoser(stop_on=["exploding"])
    tiny_trainer("non_finite", str(tmp_path), callbacks=[diagnoser], report_to=[]).train()
    [finding] = diagnoser.diagnoses
    assert finding.cause == "non_finite" and "nan_replay_step" not in finding.evidence


# -- the watch and the replay alone ------------------------------------------------------------------------------------
class Scaled(torch.nn.Module):
    """x ↦ second(first(x) * factor): the multiplication is code between two modules."""

    def __init__(self, factor: float = 1.0) -> None:
        super().__init__()
        self.first, self.second, self.factor = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), factor
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = self.second(self.dropout(self.first(x)) * self.factor).square()
        if mask is None:
            return {"loss": out.mean()}
        return {"loss": (out * mask).sum() / mask.sum()}  # a masked mean as users write it: 0/0 on an empty mask


def test_the_watch_replays_the_first_micro_batch_whose_loss_is_non_finite() -> None:
    model = Scaled()
    watch = LossWatch(model, micro_batches=3)
    finite, infinite = torch.ones(2, 4), torch.full((2, 4), math.inf)
    for x in (finite, infinite, finite):
        model(x)["loss"].backward()
    assert watch.check(step=7)
    assert watch.origin == Origin(7, "first", inputs_finite=False, weights_finite=True)  # the batch's own inf
    assert "first non-finite output: first, its input already was" in watch.origin.describe()
    assert not model._forward_hooks


def test_a_loss_that_is_no_tensor_is_left_alone() -> None:
    """A hook inside the user's forward pass must never raise: a model returning a plain float as its loss."""
    model = torch.nn.Linear(2, 2)
    watch = LossWatch(model)
    watch._record(model, (), {}, {"loss": 1.5})
    watch._record(model, (), {}, (torch.ones(1),))
    assert not watch._batches and not watch.check(step=1)


def test_finite_losses_drop_their_batches_and_keep_the_watch() -> None:
    model = Scaled()
    watch = LossWatch(model, micro_batches=2)
    for _ in range(5):  # more micro-batches than a step holds: only the last two are kept
        model(torch.ones(1, 4))
    assert len(watch._batches) == 2
    with torch.no_grad():
        model(torch.ones(1, 4))  # an evaluation: not kept
    assert len(watch._batches) == 2 and not watch.check(step=1) and not watch._batches
    assert watch.origin is None and model._forward_hooks


@pytest.mark.parametrize(
    ("factor", "poisoned", "expected"),
    [
        (math.inf, None, Origin(1, "second", inputs_finite=False)),  # born in code between the modules
        (1.0, "second", Origin(1, "second", weights_finite=False)),  # weights already non-finite
        (1.0, None, Origin(1, None)),  # everything finite: the NaN did not come back
    ],
)
def test_the_replay_tells_a_birth_from_a_nan_it_was_handed(factor, poisoned, expected) -> None:
    model = Scaled(factor)
    if poisoned:
        with torch.no_grad():
            model.get_submodule(poisoned).weight[0, 0] = math.nan
    assert replay(model, (torch.ones(1, 4),), {}, step=1) == expected


def test_a_nan_born_in_the_models_own_loss_is_told_as_such() -> None:
    """Every module returns finite values; the model's loss divides by a token count of 0."""
    origin = replay(Scaled(), (torch.ones(1, 4),), {"mask": torch.zeros(1, 4)}, step=5)
    assert origin == Origin(5, "") and origin.born_in == ""
    assert origin.evidence()["non_finite_born_in"] == "the model's loss computation"
    assert "born in the model's loss computation: every module inside it returns finite values" in origin.describe()
    finding = origin.attached_to(Finding("exploding", "non_finite", 5, "the train loss became non-finite", {}, ["x"]))
    assert finding.fixes[0].startswith("find why the loss is NaN/inf while every layer's output is finite")
    assert finding.fixes[1:] == ["x"] and finding.evidence["nan_replay_step"] == 5


def test_the_replay_keeps_the_random_state_and_the_model_as_they_were() -> None:
    model = Scaled(math.inf).train()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    replay(model, (torch.ones(1, 4),), {}, step=1)  # its dropout draws a mask
    assert torch.equal(torch.get_rng_state(), before)
    assert model.training and not any(m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
