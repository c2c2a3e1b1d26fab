"""`roboalign align plan`: per-GPU memory from a model's config built on the meta device (issue 25, item 5)."""

import json
from pathlib import Path

import pytest

from lerobot_roboalign import cli
from lerobot_roboalign.align import plan

EXAMPLES = Path(__file__).parents[2] / "examples" / "accelerate"
# Qwen2.5-VL-7B-Instruct's published sizes (its config.json); built from transformers' config class, no download.
QWEN25_VL_7B = dict(
    text_config=dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                     intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, out_hidden_size=3584, num_heads=16),
    tie_word_embeddings=False,
)


@pytest.fixture(scope="module")
def qwen25_vl_7b_config(tmp_path_factory) -> Path:
    from transformers import Qwen2_5_VLConfig

    path = tmp_path_factory.mktemp("qwen25_vl_7b")
    Qwen2_5_VLConfig(**QWEN25_VL_7B).save_pretrained(path)
    return path


def test_the_plan_counts_the_tiny_backbones_real_parameters(tiny_qwen25_backbone, tmp_path):
    from transformers import AutoModelForImageTextToText

    result = cli.main(["align", "plan", f"--model={tiny_qwen25_backbone}", "--action_tokens=10",
                       f"--output_dir={tmp_path}"]) or json.loads((tmp_path / "plan.json").read_text())
    real = AutoModelForImageTextToText.from_pretrained(tiny_qwen25_backbone)
    hidden = real.config.text_config.hidden_size
    tied = real.get_output_embeddings().weight is real.get_input_embeddings().weight
    expected = sum(p.numel() for p in real.parameters()) + 10 * hidden * (1 if tied else 2)
    sizes = result["sizes"]
    assert sizes["total"] == expected
    assert sizes["vision"] == sum(p.numel() for n, p in real.named_parameters() if ".visual." in f".{n}")
    written = json.loads((tmp_path / "plan.json").read_text())
    assert written["sizes"] == sizes and (tmp_path / "plan.md").read_text().startswith("Model ")
    configs = {(r["stage"], r["config"]) for r in written["rows"]}
    assert {("sft", "fsdp"), ("sft", "deepspeed_zero3"), ("grpo", "deepspeed_zero2"), ("vla", "ddp")} <= configs
    assert ("vla", "fsdp") not in configs  # lerobot-train runs the VLA with DDP


def test_the_model_is_built_on_the_meta_device(qwen25_vl_7b_config):
    built, text = plan.build_on_meta(str(qwen25_vl_7b_config))
    assert {p.device.type for p in built.parameters()} == {"meta"}  # no 33 GB allocated
    assert text.hidden_size == 3584


def test_qwen25_vl_7b_on_8x80gb(qwen25_vl_7b_config):
    cfg = plan.PlanConfig(model=str(qwen25_vl_7b_config))
    result = plan.plan(cfg)
    sizes = result["sizes"]
    added = cfg.action_tokens * 3584 * 2  # untied embeddings and LM head
    assert 8.2e9 < sizes["total"] - added < 8.4e9  # Qwen2.5-VL-7B: 8.29B parameters
    assert 0.6e9 < sizes["vision"] < 0.7e9
    rows = {(r["stage"], r["strategy"]): r for r in result["rows"]}
    for stage in ("sft", "grpo", "vla"):
        chosen = rows[(stage, plan.read_launch(EXAMPLES / f"{result['recommended'][stage]}.yaml", None).kind)]
        assert chosen["fits"] and chosen["peak"] < 0.9 * 80
    assert not rows[("sft", "ddp")]["fits"]  # 16 bytes per parameter do not fit without sharding
    assert rows[("grpo", "zero3")]["reference"] < rows[("grpo", "zero2")]["reference"] == pytest.approx(
        2 * sizes["total"] / 1e9)  # bf16 reference: whole under ZeRO-2, sharded under ZeRO-3
    assert rows[("grpo", "zero2")]["vllm"] == pytest.approx(0.3 * 80)
    off = plan.plan(plan.PlanConfig(model=str(qwen25_vl_7b_config), gradient_checkpointing=False, stages=["sft"]))
    assert off["rows"][0]["activations"] > 3 * rows[("sft", off["rows"][0]["strategy"])]["activations"]


def test_model_states_agree_with_deepspeeds_estimators(qwen25_vl_7b_config):
    pytest.importorskip("deepspeed")
    cfg = plan.PlanConfig(model=str(qwen25_vl_7b_config), freeze_vision=False, stages=["sft"],
                          accelerate_configs=[str(EXAMPLES / "deepspeed_zero2.yaml"), str(EXAMPLES / "deepspeed_zero3.yaml")])
    for row in plan.plan(cfg)["rows"]:  # every parameter trained: the same model as DeepSpeed's formulas
        states = row["weights"] + row["gradients"] + row["optimizer"] + row["gathered"]
        assert states == pytest.approx(row["deepspeed_estimator"], rel=1e-6), row["strategy"]


def test_bad_input_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match="choose from"):
        plan.PlanConfig(stages=["rl"])
    with pytest.raises(ValueError, match="local model directory"):
        plan.model_sizes(str(tmp_path / "nothing-here"), plan.PlanConfig())
    config = tmp_path / "tpu.yaml"
    config.write_text("distributed_type: XLA\nnum_processes: 8\n")
    with pytest.raises(ValueError, match="not planned"):
        plan.read_launch(config, None)
