"""The gradient probe (trainwatch/gradients.py): which trainable tensors get a gradient, read only when armed.

On real tiny Trainer runs: a layer cut off from the backward pass at an evaluation is decided "flat"/frozen_layers
and named; zero_gradients and non_finite findings name the first tensor concerned; a healthy run is read on a few
steps only. Plus the probe alone, on a hand-set model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from trainwatch import Diagnoser, run_inspection, train
from trainwatch.findings import logged_cause
from trainwatch.gradients import AFTER_EVALUATION, BASELINE, GradientProbe
from trainwatch.testing import Progressions, tiny_trainer


class DetachAtEvaluation(TrainerCallback):
    """From the first evaluation on, one attention block's output leaves the graph: its weights get no gradient."""

    def __init__(self, layer: int = 1) -> None:
        self.layer = layer
        self.handle = None

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if self.handle is None:
            attention = model.model.layers[self.layer].self_attn
            self.handle = attention.register_forward_hook(lambda module, inputs, out: (out[0].detach(), *out[1:]))


def test_a_layer_cut_off_at_an_evaluation_is_decided_and_named(tmp_path) -> None:
    diagnoser = Diagnoser(stop_on=("flat",))
    trainer = tiny_trainer("healthy", str(tmp_path), callbacks=[diagnoser, DetachAtEvaluation(1)], report_to=[])
    trainer.train()
    (finding,) = diagnoser.diagnoses
    assert (finding.kind, finding.cause) == ("flat", "frozen_layers")
    # evaluation after step 25; read after it (26) and confirmed (27); training stops there
    assert finding.step == trainer.state.global_step == 27
    evidence = finding.evidence
    assert evidence["decided_by"] == "gradient probe" and evidence["evaluation_step"] == 25
    # q, k, v, o of layer 1 and the norm in front of them: exactly no gradient; everything else still learns
    assert evidence["tensors_without_gradient"] == evidence["tensors_cut_off"] == 5
    assert evidence["cut_off"][0] == "model.layers.1.self_attn.q_proj.weight"
    assert "model.layers.1.input_layernorm.weight" in evidence["cut_off"]
    assert "model.layers.1.self_attn.q_proj.weight" in finding.summary and "after the evaluation at step 25" in finding.summary
    assert "support_avx512bf16_for_cpu = False" in finding.fixes[0]


def test_a_healthy_run_is_read_on_a_few_steps_only_and_never_flagged(tmp_path) -> None:
    diagnoser = Diagnoser()
    trainer = tiny_trainer(
        "healthy", str(tmp_path), callbacks=[diagnoser], report_to=[], max_steps=50, eval_steps=10, max_grad_norm=0.0
    )
    trainer.train()
    assert diagnoser.verdict == "healthy"
    assert {c.name: c.status for c in diagnoser.checks}["trainable parameters"] == "pass"
    # the baseline (step 1), then two steps before and one after each of the 5 evaluations of 50 steps (no clipping:
    # a step that clipping scaled after an evaluation is read again, up to 3 times)
    assert diagnoser.probe.reads <= 1 + 5 * 3 < trainer.state.global_step / 3


def test_zero_gradients_names_the_cause_and_the_first_tensor_without_one(tmp_path) -> None:
    """LoRA with lora_alpha=0, the pre-flight off: the logs' zero_gradients, refined by the model to its cause."""
    diagnoser = Diagnoser(preflight=False)
    tiny_trainer("zero_gradients", str(tmp_path), callbacks=[diagnoser], report_to=[], max_steps=7).train()
    finding = diagnoser.diagnoses[0]
    assert (finding.cause, finding.step) == ("lora_alpha_zero", 5) and logged_cause(finding.cause) == "zero_gradients"
    evidence = finding.evidence
    assert (evidence["lora_alpha"], evidence["lora_r"], evidence["zero_scaled_tensors"]) == (0, 8, 8)
    # the gradient probe saw it too: lora A/B of q, v in 2 layers, exactly no gradient
    assert evidence["tensors_without_gradient"] == evidence["trainable_tensors"] == 8
    assert evidence["first_without_gradient"] == "model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert "LoRA's scaling lora_alpha / r is 0 (lora_alpha=0, r=8)" in finding.summary
    assert "8 of 8 trainable tensors receive no gradient, first model.layers.0.self_attn.q_proj.lora_A" in finding.summary
    assert finding.fixes[0].startswith("set LoRA's alpha: lora_alpha 0 → 16 (2 × r, r = 8)")


def test_non_finite_names_where_the_nan_is(tmp_path) -> None:
    diagnoser = Diagnoser()
    # NaN from step 4 on; the run goes on (no stop_on), so the probe armed by the NaN grad norm reads step 5
    tiny_trainer("non_finite", str(tmp_path), callbacks=[diagnoser], report_to=[], max_steps=8).train()
    finding = diagnoser.diagnoses[0]
    assert finding.cause == "non_finite"
    evidence = finding.evidence
    # A 0/0 loss makes every gradient NaN, and clipping spreads a NaN norm anyway: no single tensor is blamed.
    assert evidence["tensors_with_non_finite_gradient"] == evidence["trainable_tensors"]
    assert evidence["first_non_finite_gradient"] is None
    assert evidence["tensors_with_non_finite_weights"] == 21 and evidence["first_non_finite_weight"] is None
    assert evidence["gradient_probe_step"] == finding.step + 1
    assert "every one of the 21 trainable tensors has a non-finite gradient" in finding.summary


class NaNFromStep(TrainerCallback):
    """From optimizer step ``step`` on, one decoder layer's MLP returns NaN: a forward pass gone non-finite."""

    def __init__(self, step: int, layer: int = 1) -> None:
        self.step, self.layer, self.handle = step, layer, None

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step and self.handle is None:
            mlp = model.model.layers[self.layer].mlp
            self.handle = mlp.register_forward_hook(lambda module, inputs, out: out * math.nan)


def test_a_nan_born_in_one_layer_is_named_by_the_replay_not_by_the_gradients(tmp_path) -> None:
    """A NaN in layer 1's output makes the loss NaN, so every gradient is NaN (the backward starts from it), and the
    optimizer writes NaN into every weight: the gradients and weights read after it cannot say where it was born,
    and the report says so rather than name the first tensor in module order. The replay of the step's batch, before
    the update, can (tests/test_nan_origin.py)."""
    diagnoser = Diagnoser()
    tiny_trainer("healthy", str(tmp_path), callbacks=[NaNFromStep(4), diagnoser], report_to=[], max_steps=6,
                 eval_strategy="no").train()
    finding = diagnoser.diagnoses[0]
    assert (finding.kind, finding.cause, finding.step) == ("exploding", "non_finite", 4)
    evidence = finding.evidence
    assert evidence["tensors_with_non_finite_gradient"] == evidence["tensors_with_non_finite_weights"] == 21
    assert evidence["first_non_finite_gradient"] is None and evidence["first_non_finite_weight"] is None
    assert "every one of the 21 trainable tensors has non-finite weights" in finding.summary
    assert evidence["non_finite_born_in"] == "model.layers.1.mlp" and evidence["nan_replay_step"] == 4


# -- why no gradient can flow, told from the model ---------------------------------------------------------------
def with_lora(model, **config):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], **config))


def report_of(trainer) -> dict:
    return json.loads((Path(trainer.args.output_dir) / "trainwatch" / "diagnosis.json").read_text())


def grad_norms(trainer) -> list[float]:
    return [e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e]


def test_nothing_trainable_is_told_before_the_first_backward_pass_crashes(tmp_path) -> None:
    trainer = tiny_trainer("healthy", str(tmp_path), callbacks=[Diagnoser(stop_on=("flat",))], report_to=[],
                           max_steps=3, eval_strategy="no")
    trainer.model.requires_grad_(False)
    with pytest.raises(RuntimeError, match="does not require grad"):  # torch's words, at the first backward pass
        trainer.train()
    report = report_of(trainer)  # written by the pre-flight, before the crash
    (finding,) = report["diagnoses"]
    assert (finding["cause"], finding["step"], finding["evidence"]["decided_by"]) == ("nothing_trainable", 0, "pre-flight")
    assert finding["summary"] == "none of the 21 parameter tensors requires grad, and the model has no adapters"
    check = {c["name"]: c for c in report["preflight"]["checks"]}["trainable parameters"]
    assert check["status"] == "fail" and check["fix"] == finding["fixes"][0] and "get_peft_model" in check["fix"]


def test_a_frozen_model_whose_inputs_require_grad_is_refined_from_zero_gradients(tmp_path) -> None:
    """Frozen, but its input embeddings' output requires grad: the backward runs and every grad norm is exactly 0.
    With the pre-flight off, the logs decide zero_gradients and the model names the cause."""
    diagnoser = Diagnoser(preflight=False)
    trainer = tiny_trainer("healthy", str(tmp_path), callbacks=[diagnoser], report_to=[], max_steps=6, eval_strategy="no")
    trainer.model.requires_grad_(False)
    trainer.model.enable_input_require_grads()
    trainer.train()
    assert set(grad_norms(trainer)) == {0.0}
    (finding,) = diagnoser.diagnoses
    assert (finding.cause, finding.step) == ("nothing_trainable", 5)
    assert finding.summary.startswith("the grad norm has been exactly 0.0 since step 1")
    assert finding.summary.endswith("none of the 21 parameter tensors requires grad, and the model has no adapters")


def test_lora_a_and_b_both_zero_is_told_before_the_first_step(tmp_path) -> None:
    diagnoser = Diagnoser(stop_on=("flat",))
    trainer = tiny_trainer("healthy", str(tmp_path), callbacks=[diagnoser], report_to=[], max_steps=10, eval_strategy="no")
    trainer.model = trainer.model_wrapped = with_lora(trainer.model)
    for name, p in trainer.model.named_parameters():
        if "lora_A" in name:
            p.data.zero_()  # lora_B starts at 0: each one's gradient is the other's product
    trainer.train()
    assert trainer.state.global_step == 1 and grad_norms(trainer) == [0.0]  # stopped after Trainer's first step
    (finding,) = diagnoser.diagnoses
    assert (finding.cause, finding.step) == ("lora_weights_zero", 0)
    assert finding.evidence["zero_adapter_tensors"] == 8
    assert finding.evidence["first_without_gradient"] == "model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert "init_lora_weights=True" in finding.fixes[0]


def test_reentrant_checkpointing_without_input_grads_names_the_adapters_it_cuts_off(tmp_path) -> None:
    """Checkpointed reentrantly with no input that requires grad, a layer passes its adapters no gradient; the
    lm_head trained beside them (modules_to_save) still learns, so the grad norm and the loss look healthy.
    Transformers adds the input-grad hook when it enables checkpointing on a model fed input_ids; a model fed
    pixel values or audio features gets none, as this one does once the hook is removed."""
    diagnoser = Diagnoser(stop_on=("flat",))
    trainer = tiny_trainer("healthy", str(tmp_path), callbacks=[diagnoser], report_to=[], max_steps=10, eval_strategy="no")
    model = with_lora(trainer.model, modules_to_save=["lm_head"])
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    assert run_inspection.blocked_gradients(model) is None  # with transformers' hook the inputs require grad
    model.disable_input_require_grads()
    trainer.model = trainer.model_wrapped = model
    trainer.train()
    (finding,) = diagnoser.diagnoses
    assert (finding.cause, finding.step) == ("checkpointing_without_input_grads", 0)
    evidence = finding.evidence
    assert (evidence["reentrant_layers"], evidence["tensors_in_reentrant_layers"], evidence["trainable_tensors"]) == (2, 8, 9)
    assert evidence["first_without_gradient"] == "model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert "{'use_reentrant': False}" in finding.fixes[0]
    # what really happened at step 1, read by the probe: no gradient in any adapter, the lm_head learning
    reading = diagnoser.probe.latest
    levels = dict(zip(reading.names, reading.levels))
    assert reading.step == 1 and grad_norms(trainer)[0] > 0
    assert [v for n, v in levels.items() if "lora_" in n] == [0.0] * 8
    assert levels["base_model.model.lm_head.modules_to_save.default.weight"] > 0


def test_a_4bit_model_prepared_twice_for_kbit_training_has_its_adapters_frozen(tmp_path) -> None:
    """The reference run's QLoRA model (the shipped tiny model in 4-bit NF4, prepared, then LoRA), prepared once more:
    prepare_model_for_kbit_training freezes every parameter, the adapters included."""
    pytest.importorskip("bitsandbytes")
    from peft import prepare_model_for_kbit_training

    script, args = train.parse(["--use_cpu", "true", "--output_dir", str(tmp_path)])
    model = prepare_model_for_kbit_training(train.load_model(script, args))
    diagnoser = Diagnoser(stop_on=("flat",))
    settings = TrainingArguments(str(tmp_path), max_steps=5, per_device_train_batch_size=2, logging_steps=1,
                                 use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True)
    trainer = Trainer(model=model, args=settings, train_dataset=Progressions(8), callbacks=[diagnoser])
    trainer.train()
    assert trainer.state.global_step == 1 and grad_norms(trainer) == [0.0]
    (finding,) = diagnoser.diagnoses
    assert (finding.cause, finding.step) == ("frozen_by_kbit_prepare", 0)
    assert finding.evidence["frozen_adapter_tensors"] == 32  # lora A/B of q, k, v, o in 4 layers
    assert finding.evidence["first_frozen"] == "model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert "called after get_peft_model (the model prepared twice)" in finding.summary
    assert finding.fixes[0].startswith("prepare the model once, before adding the adapters")


# -- the probe alone ------------------------------------------------------------------------------------------------
class TwoLayers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)


def with_gradients(model: TwoLayers, first: float, second: float) -> TwoLayers:
    for layer, value in ((model.first, first), (model.second, second)):
        for p in layer.parameters():
            p.grad = None if value is None else torch.full_like(p, value)
    return model


def test_unarmed_the_probe_reads_nothing() -> None:
    probe, model = GradientProbe(), TwoLayers()
    assert probe.armed and probe.read(with_gradients(model, 1.0, 1.0), 1).reason == BASELINE
    assert not probe.armed and probe.read(model, 2) is None and probe.reads == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_the_first_non_finite_gradient_is_named_when_not_every_one_is(bad) -> None:
    probe, model = GradientProbe(), TwoLayers()
    probe.read(with_gradients(model, 1.0, 1.0), 1)
    probe.logged(1, 2.0)
    probe.logged(2, bad)
    assert probe.armed
    probe.read(with_gradients(model, 1.0, bad), 3)
    where = probe.localization()
    assert where["first_non_finite_gradient"] == "second.weight" and where["tensors_with_non_finite_gradient"] == 2
    model.second.weight.data[0, 0] = bad
    assert probe.non_finite_weights(model) == {
        "trainable_tensors": 4, "tensors_with_non_finite_weights": 1, "first_non_finite_weight": "second.weight"
    }


def test_a_cut_must_hold_on_two_reads_after_an_evaluation() -> None:
    probe, model = GradientProbe(), TwoLayers()
    probe.read(with_gradients(model, 1.0, 1.0), 1)
    probe.evaluated(1)
    assert probe.read(with_gradients(model, None, 1.0), 2).reason == AFTER_EVALUATION
    assert probe.cut() is None and probe.armed  # seen once: confirmed on the next step
    probe.read(with_gradients(model, 1.0, 1.0), 3)
    assert probe.cut() is None and not probe.armed  # it came back: one odd batch
    probe.evaluated(3)
    probe.read(with_gradients(model, 0.0, 1.0), 4)
    probe.read(with_gradients(model, None, 1.0), 5)
    cut = probe.cut()
    assert cut.without == ["first.weight", "first.bias"] and cut.still_learning == ["second.weight", "second.bias"]
    assert (cut.step, cut.first_step, cut.evaluation_step) == (5, 4, 3)


def test_a_collapse_after_an_evaluation_counts_only_when_most_tensors_fall() -> None:
    probe, model = GradientProbe(), TwoLayers()
    probe.read(with_gradients(model, 1.0, 1.0), 1)
    probe.evaluated(1)
    probe.read(with_gradients(model, 0.01, 1.0), 2)  # half of the tensors fell 100x
    probe.read(with_gradients(model, 0.01, 1.0), 3)
    assert probe.cut().collapsed == ["first.weight", "first.bias"]
    probe.evaluated(3)
    probe.read(with_gradients(model, 0.01, 0.01), 4)  # every tensor, against the healthy reads before
    probe.read(with_gradients(model, 0.01, 0.01), 5)
    assert probe.cut() is None  # that reference is stale: reads before step 3 are not "just before" it


def test_a_tensor_frozen_on_purpose_is_not_a_cut() -> None:
    probe, model = GradientProbe(), TwoLayers()
    probe.read(with_gradients(model, 1.0, 1.0), 1)
    probe.evaluated(1)
    for p in model.first.parameters():
        p.requires_grad_(False)  # progressive freezing: the user's choice
    probe.read(with_gradients(model, None, 1.0), 2)
    assert probe.cut() is None and not probe.armed


def test_an_error_in_the_probe_turns_monitoring_off_not_training(tmp_path, monkeypatch) -> None:
    def broken(self, model, step):
        raise RuntimeError("probe bug")

    monkeypatch.setattr(GradientProbe, "read", broken)
    diagnoser = Diagnoser(report=False)
    trainer = tiny_trainer("healthy", str(tmp_path), callbacks=[diagnoser], report_to=[], max_steps=5, eval_strategy="no")
    trainer.train()
    assert diagnoser.disabled and trainer.state.global_step == 5


def test_a_read_scaled_by_clipping_judges_no_collapse() -> None:
    """A spike in one tensor makes clipping shrink every other one: that is not a collapse, so a clipped read is
    not judged, and the next one is read instead."""
    probe, model = GradientProbe(max_grad_norm=1.0), TwoLayers()
    probe.read(with_gradients(model, 0.1, 0.1), 1)
    probe.evaluated(1)
    with_gradients(model, 0.001, 0.001)
    model.second.bias.grad.fill_(1.0)  # as clipped: the total is max_grad_norm, the spike carries it
    reading = probe.read(model, 2)
    assert reading.total == pytest.approx(1.0, rel=1e-4) and probe.cut() is None and probe.armed
    probe.read(with_gradients(model, 0.1, 0.1), 3)  # not clipped, nothing fell
    assert probe.cut() is None and not probe.armed


def test_no_gradient_means_exactly_zero_and_non_finite_a_nan_or_inf_element() -> None:
    probe, model = GradientProbe(), TwoLayers()
    with_gradients(model, 1e-30, 1e30)  # squares underflow and overflow in float32; the values do not
    reading = probe.read(model, 1)
    assert not reading.without and not reading.non_finite and len(reading.learning) == 4
