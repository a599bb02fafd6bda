"""The 4-bit CPU trap: bitsandbytes repacks Linear4bit weights for an inference-only kernel during evaluation.

On CPUs with AVX512-BF16, bitsandbytes sets ``support_avx512bf16_for_cpu`` on every Linear4bit; the first eval-mode,
no-grad forward (every evaluation) then repacks the weight in place, until a checkpoint save unpacks it. The reference
run clears the flag.
"""

from __future__ import annotations

import json

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")
from bitsandbytes.nn.modules import has_avx512bf16  # noqa: E402

from trainwatch import train  # noqa: E402


def four_bit_model(guard: bool):
    script, args = train.parse(["--use_cpu", "true", "--output_dir", "unused"])
    model = train.load_model(script, args)  # applies the guard
    if not guard:
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = True  # what bitsandbytes sets on an AVX512-BF16 CPU
    return model


def packed_layers(model) -> int:
    return sum(
        bool(getattr(m.weight.quant_state, "packing_format_for_cpu", False))
        for m in model.modules()
        if isinstance(m, bnb.nn.Linear4bit)
    )


@pytest.mark.parametrize("guard", [True, False])
def test_evaluation_repacks_4bit_weights_only_without_the_guard(guard):
    model = four_bit_model(guard)
    layers = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7, 8]]))
    assert packed_layers(model) == (0 if guard else layers)


def run_reference(out, *, guard: bool, save_every_evaluation: bool, monkeypatch, epochs: int = 1) -> dict:
    """The reference run on the CPU, 6 steps an epoch, evaluated every 4 steps; its diagnosis.json."""
    if not guard:
        monkeypatch.setattr(train, "keep_4bit_layers_trainable_on_cpu", lambda model: 0)
    saving = ["--save_steps", "4"] if save_every_evaluation else ["--save_strategy", "no", "--load_best_model_at_end", "false"]
    train.main([
        "--use_cpu", "true", "--output_dir", str(out), "--max_examples", "96", "--max_eval_examples", "8",
        "--num_train_epochs", str(epochs), "--logging_steps", "2", "--eval_steps", "4", "--disable_tqdm", "true", *saving,
    ])
    return json.loads((out / "trainwatch" / "diagnosis.json").read_text())


@pytest.mark.skipif(not has_avx512bf16(), reason="the packed kernel needs an AVX512-BF16 CPU")
def test_diagnoser_reports_frozen_layers_when_the_guard_is_off(tmp_path, monkeypatch):
    """After the first evaluation the base layers have no backward: the gradients of every q/k/v adapter collapse
    (by 100-1000x, to exactly 0 where lora_B is still 0), while the o_proj adapters, nearest the loss, still learn.
    The grad norm stays well above 0 and the loss still falls: not zero_gradients, and no rule on the logs sees it."""
    report = run_reference(tmp_path / "trap", guard=False, save_every_evaluation=False, monkeypatch=monkeypatch, epochs=2)
    first = report["diagnoses"][0]
    assert (report["verdict"], first["cause"]) == ("flat", "frozen_layers")
    assert "zero_gradients" not in [d["cause"] for d in report["diagnoses"]]
    evidence = first["evidence"]
    assert evidence["decided_by"] == "gradient probe" and evidence["evaluation_step"] == 4
    # seen at step 5, confirmed on the next read whose gradients clipping did not scale (6 or a few later), stopped
    assert 6 <= first["step"] == report["stopped_by"]["step"] <= 11
    assert evidence["packed_4bit_layers"] == 28  # q, k, v, o, gate, up, down in each of the 4 layers
    assert evidence["trainable_tensors"] == 32 and evidence["tensors_cut_off"] >= 16
    assert evidence["cut_off"][0] == "model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert any("q_proj.lora_B" in name for name in evidence["cut_off"])
    assert all("o_proj" in name for name in evidence["still_learning"])
    assert "lora_A" in first["summary"] and "support_avx512bf16_for_cpu = False" in first["fixes"][0]


@pytest.mark.skipif(not has_avx512bf16(), reason="the packed kernel needs an AVX512-BF16 CPU")
def test_a_save_after_each_evaluation_undoes_the_repacking(tmp_path, monkeypatch):
    """The reference run saves a checkpoint after each evaluation, and saving unpacks the 4-bit weights
    (Linear4bit._save_to_state_dict), so with the guard off it still trains every adapter: nothing is cut off."""
    report = run_reference(tmp_path / "saved", guard=False, save_every_evaluation=True, monkeypatch=monkeypatch)
    assert not [d for d in report["diagnoses"] if d["cause"] in ("frozen_layers", "zero_gradients")]


def test_no_layer_is_cut_off_with_the_guard_on(tmp_path, monkeypatch):
    report = run_reference(tmp_path / "guarded", guard=True, save_every_evaluation=False, monkeypatch=monkeypatch)
    assert not [d for d in report["diagnoses"] if d["cause"] in ("frozen_layers", "zero_gradients")]
