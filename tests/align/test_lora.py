"""One-GPU alignment (issue 30, item 5): LoRA / QLoRA through TRL's peft integration, merged into a full backbone."""

import csv
import importlib.util
import json
import re
from pathlib import Path

import draccus
import pytest
import torch

from lerobot_roboalign.action_vocab import ActionVocabulary
from lerobot_roboalign.align import lora, plan
from lerobot_roboalign.align.common import ModelConfig
from lerobot_roboalign.align.config import LANGUAGE_TARGETS
from lerobot_roboalign.align.data import load_samples
from lerobot_roboalign.align.grpo import AlignGRPOConfig, load_aligned, score_model
from lerobot_roboalign.align.sft import AlignSFTConfig

from test_align_training import assert_a_vla_trains_on, data_args, scripted_sft, training_args
from test_plan import QWEN25_VL_7B

REPO = Path(__file__).resolve().parents[2]

LORA_ARGS = ["--lora.enabled=true", "--lora.dropout=0"]  # rank 16, alpha 32 (the defaults)
HEAD_SCALE = 10.0
BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None
NO_BITSANDBYTES = ("bitsandbytes is not installed (pip install 'lerobot_policy_roboalign[qlora]'): the 4-bit base "
                   "cannot be loaded; its configuration is checked without it")


def extended_base(backbone: Path, fast) -> tuple[torch.nn.Module, object, ActionVocabulary]:
    """The base as the run started: float32, with the action tokens at the mean row."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(backbone, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(backbone)
    return model, processor, ActionVocabulary.extend(model, processor.tokenizer, fast)


def prompt_inputs(processor, sample: dict) -> dict:
    from lerobot_roboalign.align.data import align_messages
    from trl.data_utils import prepare_multimodal_messages

    messages = prepare_multimodal_messages(align_messages(sample["task"], sample["state"]), images=sample["images"])
    return processor.apply_chat_template([messages], add_generation_prompt=True, tokenize=True, return_dict=True,
                                         return_tensors="pt")


# ---- configuration (fast) -----------------------------------------------------------------------------------
def test_the_lora_section_parses_and_refuses_what_cannot_work():
    cfg = draccus.parse(config_class=AlignSFTConfig, args=["--lora.enabled=true", "--lora.r=4", "--lora.quantize=4bit",
                                                            "--lora.target_modules=[q_proj,v_proj]"])
    assert (cfg.lora.enabled, cfg.lora.r, cfg.lora.alpha, cfg.lora.quantize) == (True, 4, 32, "4bit")
    assert cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert not draccus.parse(config_class=AlignGRPOConfig, args=[]).lora.enabled  # full runs stay the default
    with pytest.raises(ValueError, match="choose from"):
        lora.LoRASection(enabled=True, quantize="3bit")
    with pytest.raises(ValueError, match="--lora.enabled=true"):
        lora.LoRASection(quantize="4bit")
    with pytest.raises(ValueError, match="drop lm_head"):
        lora.LoRASection(enabled=True, target_modules=["q_proj", "lm_head"])


def test_adapters_go_on_the_language_model_and_the_action_rows(extended_backbone):
    from peft import get_peft_model

    model, _, vocabulary, _, _ = extended_backbone
    config = lora.peft_config(lora.LoRASection(enabled=True), model, vocabulary)
    names = [name for name, _ in model.named_modules()]
    targeted = [n for n in names if re.fullmatch(config.target_modules, n)]
    assert targeted and all(".language_model.layers." in n for n in targeted)
    assert {n.rsplit(".", 1)[1] for n in targeted} == set(LANGUAGE_TARGETS)
    assert any(".visual." in n and n.endswith("mlp.gate_proj") for n in names)  # the vision tower has them, untouched
    ids = [vocabulary.start_id, vocabulary.end_id, *vocabulary.action_ids.tolist()]
    assert config.trainable_token_indices == {"embed_tokens": ids, "lm_head": ids}  # the tiny backbone is untied
    wrapped = get_peft_model(_copy(model), config)
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n or "trainable_tokens_delta" in n for n in trainable)
    rows = [p for n, p in wrapped.named_parameters() if "trainable_tokens_delta" in n]
    assert len(rows) == 2 and all(p.shape[0] == len(ids) and p.dtype == torch.float32 for p in rows)


def _copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model)


def test_qlora_configures_a_4bit_nf4_base_with_bf16_compute(extended_dir):
    section = lora.LoRASection(enabled=True, quantize="4bit")
    quantization = lora.quantization_config(section)
    assert quantization.load_in_4bit and not quantization.load_in_8bit
    assert quantization.bnb_4bit_quant_type == "nf4" and quantization.bnb_4bit_use_double_quant
    assert quantization.bnb_4bit_compute_dtype == torch.bfloat16
    assert lora.quantization_config(lora.LoRASection(enabled=True)) is None
    if not BITSANDBYTES:
        with pytest.raises(ImportError, match=r"\[qlora\]"):
            lora.check_bitsandbytes(section)
        pytest.skip(NO_BITSANDBYTES)
    from bitsandbytes.nn import Linear4bit
    from peft import get_peft_model

    model, _ = lora.load_for_training(ModelConfig(path=str(extended_dir)), section)
    vocabulary = ActionVocabulary.from_pretrained(extended_dir)
    assert model.is_loaded_in_4bit
    layer = model.model.language_model.layers[0].self_attn.q_proj
    assert isinstance(layer, Linear4bit) and layer.compute_dtype == torch.bfloat16
    assert not isinstance(model.lm_head, Linear4bit)  # the LM head keeps its rows trainable in full
    model = lora.prepare(model, section, gradient_checkpointing=True)
    wrapped = get_peft_model(model, lora.peft_config(section, model, vocabulary))
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n or "trainable_tokens_delta" in n for n in trainable)


def test_an_adapter_directory_is_refused_with_the_merged_path(tmp_path):
    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / lora.ADAPTER_CONFIG).write_text("{}")
    with pytest.raises(ValueError, match=str(tmp_path / "run" / "model")):
        lora.check_start(str(adapter))


# ---- align plan on one 24 GB GPU -----------------------------------------------------------------------------
# Qwen2.5-VL-3B-Instruct's published sizes (its config.json: tied embeddings); built from the config class, no download.
QWEN25_VL_3B = dict(
    text_config=dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                     intermediate_size=11008, vocab_size=151936, tie_word_embeddings=True),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, out_hidden_size=2048, num_heads=16),
    tie_word_embeddings=True,
)
ONE_GPU = ["--gpu_memory_gb=24", "--num_processes=1", f"--accelerate_configs=[{REPO}/examples/accelerate/ddp.yaml]",
           "--sft_micro_batch=1", "--grpo_micro_batch=5", "--vllm=false"]


@pytest.fixture(scope="module")
def qwen_configs(tmp_path_factory) -> dict[str, Path]:
    from transformers import Qwen2_5_VLConfig

    paths = {}
    for name, sizes in (("3b", QWEN25_VL_3B), ("7b", QWEN25_VL_7B)):
        paths[name] = tmp_path_factory.mktemp(f"qwen25_vl_{name}")
        Qwen2_5_VLConfig(**sizes).save_pretrained(paths[name])
    return paths


def test_the_plans_adapter_count_is_peft_s(extended_backbone):
    from peft import get_peft_model

    model, _, vocabulary, _, _ = extended_backbone
    cfg = plan.PlanConfig(action_tokens=vocabulary.num_action_tokens + 2)
    sizes = plan.measure(model, model.config.text_config, cfg)
    wrapped = get_peft_model(_copy(model), lora.peft_config(lora.LoRASection(enabled=True), model, vocabulary))
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    assert sizes.lora + sizes.action_rows == trainable
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert sizes.quantized == linear - model.get_output_embeddings().weight.numel()


def test_3b_lora_and_7b_qlora_fit_one_24gb_gpu_with_the_recommended_settings(qwen_configs, tmp_path):
    three = plan.main(["--model=" + str(qwen_configs["3b"]), "--method=lora", *ONE_GPU])
    seven = plan.main(["--model=" + str(qwen_configs["7b"]), "--method=qlora", *ONE_GPU, f"--output_dir={tmp_path}"])
    assert 3.7e9 < three["sizes"]["total"] < 3.8e9  # Qwen2.5-VL-3B: 3.75B parameters, LM head tied
    for result in (three, seven):
        rows = {r["stage"]: r for r in result["rows"]}
        assert set(rows) == {"sft", "grpo", "vla"} and all(r["gpus"] == 1 and r["fits"] for r in rows.values())
        assert all(r["peak"] < 0.9 * 24 for r in rows.values()) and rows["grpo"]["reference"] == 0
        print(result["model"], {stage: round(r["peak"], 1) for stage, r in rows.items()})
    full = plan.plan(plan.PlanConfig(model=str(qwen_configs["7b"]), stages=["sft"], gpu_memory_gb=24, num_processes=1,
                                     accelerate_configs=[str(REPO / "examples/accelerate/ddp.yaml")], sft_micro_batch=1))
    lora7 = plan.plan(plan.PlanConfig(model=str(qwen_configs["7b"]), method="lora", stages=["sft"], gpu_memory_gb=24,
                                      num_processes=1, accelerate_configs=[str(REPO / "examples/accelerate/ddp.yaml")],
                                      sft_micro_batch=1))
    assert not full["rows"][0]["fits"] and not lora7["rows"][0]["fits"]  # 7B needs the 4-bit base on 24 GB
    assert seven["rows"][0]["weights"] < 0.55 * lora7["rows"][0]["weights"]
    assert "| sft qlora |" in (tmp_path / "plan.md").read_text()


# ---- training (slow) ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def confident_backbone(tiny_qwen25_backbone, tmp_path_factory) -> Path:
    """The tiny backbone with its LM head scaled up, so that its logits span what a pretrained model's do.

    A random tiny LM head caps every logit near +-2.5: LoRA, which leaves the head's text rows and the norms frozen,
    could then make no text token likely (only the action rows, trained in full, could grow). A pretrained head
    is confident; this one is made so.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tmp_path_factory.mktemp("confident")
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen25_backbone)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(HEAD_SCALE)
    model.save_pretrained(path)
    AutoProcessor.from_pretrained(tiny_qwen25_backbone).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lora_sft(confident_backbone, align_data_config, tmp_path_factory) -> Path:
    """LoRA SFT (rank 16) on 4 frames with short scripted reasoning, through the CLI entry point."""
    return scripted_sft(confident_backbone, align_data_config, tmp_path_factory.mktemp("lora_sft"), LORA_ARGS)


@pytest.mark.slow
def test_lora_sft_lowers_the_loss_and_changes_only_the_adapter_and_action_rows(lora_sft, confident_backbone):
    from safetensors.torch import load_file

    rows = [r for r in csv.DictReader((lora_sft.parent / "metrics.csv").open()) if r["loss"]]
    print(f"LoRA SFT loss {float(rows[0]['loss']):.3f} -> {float(rows[-1]['loss']):.3f}")
    assert float(rows[-1]["loss"]) < 0.2 * float(rows[0]["loss"])
    adapter = lora_sft.parent / lora.ADAPTER_SUBDIR
    saved = load_file(adapter / "adapter_model.safetensors")
    assert saved and all(".lora_A." in k or ".lora_B." in k or "trainable_tokens_delta" in k for k in saved)
    vocabulary = ActionVocabulary.from_pretrained(lora_sft)
    base, _, _ = extended_base(confident_backbone, vocabulary.fast_tokenizer)
    merged = load_aligned(ModelConfig(path=str(lora_sft)))[0]
    new = torch.as_tensor(lora.action_token_ids(vocabulary))
    old = torch.ones(base.get_input_embeddings().num_embeddings, dtype=torch.bool)
    old[new] = False
    targets = tuple(f".{name}.weight" for name in LANGUAGE_TARGETS)
    before = dict(base.named_parameters())
    changed = []
    for name, after in merged.named_parameters():
        if torch.equal(after, before[name]):
            continue
        changed.append(name)
        if name.endswith(("embed_tokens.weight", "lm_head.weight")):
            assert torch.equal(after[old], before[name][old]), f"{name}: rows other than the action tokens' changed"
            assert not torch.equal(after[new], before[name][new])
        else:
            assert ".language_model.layers." in name and name.endswith(targets), f"{name} changed"
    assert any(n.endswith("embed_tokens.weight") for n in changed) and any(n.endswith("lm_head.weight") for n in changed)
    assert any(n.endswith("q_proj.weight") for n in changed)


@pytest.mark.slow
def test_the_merged_backbone_computes_what_base_plus_adapter_computes(lora_sft, confident_backbone, align_data_config):
    from peft import PeftModel

    vocabulary = ActionVocabulary.from_pretrained(lora_sft)
    base, processor, _ = extended_base(confident_backbone, vocabulary.fast_tokenizer)
    with_adapter = PeftModel.from_pretrained(base, lora_sft.parent / lora.ADAPTER_SUBDIR).eval()
    merged = load_aligned(ModelConfig(path=str(lora_sft)))[0].eval()
    inputs = prompt_inputs(processor, load_samples(align_data_config)[0])
    extra = torch.as_tensor([new_ids(vocabulary)])
    inputs["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    if "mm_token_type_ids" in inputs:  # text tokens
        inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(extra)], dim=1)
    with torch.no_grad():
        expected = with_adapter(**inputs, output_hidden_states=True)
        got = merged(**inputs, output_hidden_states=True)
    difference = max((a - b).abs().max().item() for a, b in zip(expected.hidden_states, got.hidden_states, strict=True))
    logits = (expected.logits - got.logits).abs().max().item()
    print(f"merged vs base + adapter: max abs difference {difference:.2e} (hidden states), {logits:.2e} (logits)")
    assert difference < 1e-4 and logits < 1e-4
    assert with_adapter.base_model.model.get_input_embeddings().weight.shape == merged.get_input_embeddings().weight.shape


def new_ids(vocabulary: ActionVocabulary) -> list[int]:
    """A few action tokens in the prompt, so the trained embedding rows are part of the comparison."""
    return [vocabulary.start_id, *vocabulary.action_ids[:4].tolist(), vocabulary.end_id]


@pytest.mark.slow
def test_lora_grpo_from_the_merged_sft_model_raises_the_mean_reward(lora_sft, align_data_config, tmp_path):
    from lerobot_roboalign.align import grpo

    argv = [f"--model.path={lora_sft}", *data_args(align_data_config), *training_args(tmp_path / "grpo", 1e-3, 8, 10),
            "--grpo.max_completion_length=24", *LORA_ARGS]
    final = grpo.main(argv)
    assert (tmp_path / "grpo" / lora.ADAPTER_SUBDIR / lora.ADAPTER_CONFIG).is_file()
    samples = load_samples(align_data_config, ActionVocabulary.from_pretrained(lora_sft).fast_tokenizer)
    settings = dict(num_generations=8, temperature=1.0, top_p=0.99, max_new_tokens=24, seed=0)
    after, before = score_model(str(final), samples, **settings), score_model(str(lora_sft), samples, **settings)
    print(f"LoRA GRPO mean reward {before['reward']:.3f} -> {after['reward']:.3f}")
    assert after["reward"] > before["reward"], (before, after)


@pytest.mark.slow
def test_a_vla_trains_on_the_merged_backbone_through_lerobot_train(lora_sft, align_dataset, tmp_path):
    assert_a_vla_trains_on(lora_sft, align_dataset, tmp_path / "vla")


@pytest.mark.slow
@pytest.mark.skipif(not BITSANDBYTES, reason=NO_BITSANDBYTES)
def test_qlora_sft_runs_and_merges_into_a_float32_backbone(tiny_qwen25_backbone, align_data_config, tmp_path):
    from safetensors import safe_open

    from lerobot_roboalign.align import sft

    argv = [f"--model.path={tiny_qwen25_backbone}", *data_args(align_data_config), "--fast_vocab_size=32",
            *training_args(tmp_path / "run", 1e-2, 2, 2), *LORA_ARGS, "--lora.quantize=4bit"]
    final = sft.main(argv)
    with safe_open(final / "model.safetensors", "pt") as weights:
        assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"F32"}
    model, _, vocabulary, _ = load_aligned(ModelConfig(path=str(final)))
    assert model.get_input_embeddings().num_embeddings > max(vocabulary.action_ids)


@pytest.mark.slow
def test_a_lora_run_resumes_from_its_adapter_checkpoint_as_if_never_stopped(confident_backbone, align_data_config,
                                                                             tmp_path):
    from safetensors.torch import load_file

    from lerobot_roboalign.align import sft

    argv = [f"--model.path={confident_backbone}", *data_args(align_data_config), "--fast_vocab_size=32", *LORA_ARGS]
    sft.main([*argv, *training_args(tmp_path / "straight", 5e-3, 4, 2, save_steps=2)])
    sft.main([*argv, *training_args(tmp_path / "stopped", 5e-3, 2, 2, save_steps=2)])
    checkpoint = tmp_path / "stopped" / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "config.json").exists()
    sft.main([*argv, *training_args(tmp_path / "stopped", 5e-3, 4, 2, save_steps=2)])  # resumes from checkpoint-2
    assert json.loads((tmp_path / "stopped" / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    straight = load_file(tmp_path / "straight" / "checkpoint-4" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "stopped" / "checkpoint-4" / "adapter_model.safetensors")
    assert straight.keys() == resumed.keys()
    assert max((straight[k] - resumed[k]).abs().max().item() for k in straight) < 1e-6


def test_a_tied_lm_head_shares_the_trained_action_rows(tiny_qwen25_backbone, extended_backbone):
    """Qwen2.5-VL-3B ties its LM head to the embeddings: one set of action rows, seen by both, merged into both."""
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    _, _, _, fast, _ = extended_backbone
    config = AutoConfig.from_pretrained(tiny_qwen25_backbone)
    config.tie_word_embeddings = config.text_config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config)
    model.tie_weights()
    vocabulary = ActionVocabulary.extend(model, AutoProcessor.from_pretrained(tiny_qwen25_backbone).tokenizer, fast)
    assert lora.tied_embeddings(model)
    config = lora.peft_config(lora.LoRASection(enabled=True), model, vocabulary)
    assert list(config.trainable_token_indices) == ["embed_tokens"]
    wrapped = get_peft_model(model, config)
    (delta,) = [p for n, p in wrapped.named_parameters() if "trainable_tokens_delta" in n]
    with torch.no_grad():
        delta.add_(1.0)  # as if trained
    new = torch.as_tensor(lora.action_token_ids(vocabulary))
    assert torch.equal(wrapped.get_output_embeddings().weight[new], delta)  # what TRL's fused loss reads
    merged = wrapped.merge_and_unload()
    assert merged.get_output_embeddings().weight is merged.get_input_embeddings().weight
    assert torch.equal(merged.get_input_embeddings().weight[new], delta)
