"""RoboAlignPolicy in-process: learning, backbone modes, action queue, errors, checkpoints."""

import re
import shutil
from pathlib import Path

import pytest
import torch
from lerobot.configs import FeatureType, PolicyFeature
from transformers import AutoModelForImageTextToText

from lerobot_roboalign.backbone import VLMBackbone
from lerobot_roboalign.configuration_roboalign import RoboAlignConfig
from lerobot_roboalign.modeling_roboalign import RoboAlignPolicy

CAMERAS = ("observation.images.front", "observation.images.wrist")
STATE_DIM = ACTION_DIM = 6


def make_config(backbone: Path, **overrides) -> RoboAlignConfig:
    fields = dict(
        vlm_model_name=str(backbone),
        vlm_layer=2,
        head_hidden_size=64,
        head_num_layers=2,
        head_num_heads=4,
        image_resolution=(56, 56),
        device="cpu",
        input_features={
            **{cam: PolicyFeature(FeatureType.VISUAL, (3, 32, 32)) for cam in CAMERAS},
            "observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
    )
    fields.update(overrides)
    return RoboAlignConfig(**fields)


def make_batch(batch_size: int = 2, chunk: int = 16, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    batch = {cam: torch.rand(batch_size, 3, 32, 32, generator=generator) for cam in CAMERAS}
    batch["observation.state"] = torch.randn(batch_size, STATE_DIM, generator=generator)
    time = torch.linspace(0, 1, chunk)
    batch["action"] = torch.stack([torch.sin(time * (i + 1))[:, None].repeat(1, ACTION_DIM) for i in range(batch_size)])
    batch["action_is_pad"] = torch.zeros(batch_size, chunk, dtype=torch.bool)
    batch["task"] = ["pick up the red cube", "push the blue block left"][:batch_size]
    return batch


def observation(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in ("action", "action_is_pad")}


def seeded_loss(policy: RoboAlignPolicy, batch: dict, seed: int = 0) -> float:
    torch.manual_seed(seed)
    with torch.no_grad():
        return policy.forward(batch)[0].item()


def train_steps(policy: RoboAlignPolicy, batch: dict, steps: int, lr: float = 3e-3) -> None:
    optimizer = torch.optim.AdamW(policy.get_optim_params(), lr=lr)
    policy.train()
    for step in range(steps):
        torch.manual_seed(step)
        loss, _ = policy.forward(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    policy.eval()


@pytest.fixture(scope="module")
def backbone(tiny_qwen25_backbone) -> Path:
    return tiny_qwen25_backbone


def test_overfits_one_batch_and_leaves_frozen_backbone_bit_identical(backbone):
    torch.manual_seed(0)
    policy = RoboAlignPolicy(make_config(backbone))
    batch = make_batch()
    backbone_before = {k: v.clone() for k, v in policy.backbone.state_dict().items()}
    before = sum(seeded_loss(policy, batch, seed) for seed in range(4))
    train_steps(policy, batch, steps=60)
    after = sum(seeded_loss(policy, batch, seed) for seed in range(4))
    assert after < 0.5 * before, (before, after)
    for key, value in policy.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[key]), key


def test_lora_trains_only_adapters_and_head(backbone):
    torch.manual_seed(0)
    policy = RoboAlignPolicy(make_config(backbone, backbone_mode="lora", lora_rank=4))
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable, "LoRA mode must train something"
    assert all(n.startswith("head.") or "lora_" in n for n in trainable), sorted(trainable)[:5]
    assert any("lora_" in n for n in trainable)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    train_steps(policy, make_batch(), steps=3)
    after = policy.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("lora_" in k for k in changed)
    assert all(k.startswith(("head.", "image_token_norm.")) or "lora_" in k for k in changed), sorted(changed)[:5]


def test_full_finetuning_updates_the_backbone(backbone):
    policy = RoboAlignPolicy(make_config(backbone, backbone_mode="full"))
    assert len(policy.get_optim_params()) == len(list(policy.parameters()))
    before = policy.backbone.vlm.language_model.layers[0].mlp.up_proj.weight.clone()
    train_steps(policy, make_batch(), steps=2)
    assert not torch.equal(before, policy.backbone.vlm.language_model.layers[0].mlp.up_proj.weight)


def test_backbone_runs_only_up_to_vlm_layer_and_matches_the_full_model(backbone):
    features_model = VLMBackbone(str(backbone), layer=2, dtype=torch.float32, image_resolution=(56, 56), prompt_template="{task}")
    assert len(features_model.vlm.language_model.layers) == 2
    full = AutoModelForImageTextToText.from_pretrained(backbone).eval()
    assert len(full.model.language_model.layers) > 2
    images = [torch.rand(2, 3, 56, 56)]
    tasks = ["pick up the red cube", "push the blue block left now"]
    with torch.no_grad():
        features, mask, image_tokens = features_model(images, tasks)
        inputs = features_model.processor(
            text=features_model.build_prompts(tasks, 1),
            images=[[images[0][0]], [images[0][1]]],
            return_tensors="pt",
            padding=True,
            do_rescale=False,
        )
        hidden = full.model(**inputs, output_hidden_states=True).hidden_states[2]
        reference = full.model.language_model.norm(hidden)
    assert torch.allclose(features, reference, atol=1e-5)
    assert mask.sum(1)[0] < mask.sum(1)[1], "the shorter prompt must be padded and masked"
    assert torch.equal(image_tokens, inputs["input_ids"] == full.config.image_token_id)
    assert image_tokens.sum(1).tolist() == [features_model.image_token_count(1)] * 2


def test_padded_action_steps_are_left_out_of_the_loss(backbone):
    """Their targets do not count (the head still sees their inputs, as it sees a whole chunk when sampling)."""
    policy = RoboAlignPolicy(make_config(backbone)).eval()
    batch = make_batch()
    batch["action_is_pad"][:, 10:] = True
    garbage = dict(batch, action=batch["action"].clone())
    garbage["action"][:, 10:] = 1e3
    unmasked = dict(garbage, action_is_pad=torch.zeros_like(batch["action_is_pad"]))
    assert seeded_loss(policy, unmasked) > 1e3 * seeded_loss(policy, garbage)


@pytest.mark.parametrize(("blend_steps", "expected_calls"), [(0, 2), (4, 4)])
def test_select_action_runs_the_model_once_per_chunk(backbone, monkeypatch, blend_steps, expected_calls):
    policy = RoboAlignPolicy(make_config(backbone, n_action_steps=8, chunk_blend_steps=blend_steps)).eval()
    calls = []
    original = policy.predict_action_chunk
    monkeypatch.setattr(policy, "predict_action_chunk", lambda b: calls.append(1) or original(b))
    obs = observation(make_batch())
    actions = [policy.select_action(obs) for _ in range(16)]
    assert len(calls) == expected_calls  # every n_action_steps - chunk_blend_steps steps
    assert actions[0].shape == (2, ACTION_DIM)
    assert original(obs).shape == (2, 16, ACTION_DIM)
    policy.reset()
    policy.select_action(obs)
    assert len(calls) == expected_calls + 1


def test_non_finite_chunk_never_leaves_the_policy(backbone, monkeypatch):
    policy = RoboAlignPolicy(make_config(backbone, n_action_steps=4, chunk_blend_steps=0)).eval()
    obs = observation(make_batch())
    good = [policy.select_action(obs) for _ in range(4)]
    monkeypatch.setattr(policy, "predict_action_chunk", lambda b: torch.full((2, 16, ACTION_DIM), float("nan")))
    held = [policy.select_action(obs) for _ in range(3)]
    assert all(torch.isfinite(a).all() for a in held)
    assert all(torch.equal(a, good[-1]) for a in held), "a NaN chunk is dropped and the last action held"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b.pop("observation.images.wrist"), "observation.images.wrist"),
        (lambda b: b.update({"observation.state": torch.zeros(2, 7)}), "observation.state"),
        (lambda b: b.update({"action": torch.zeros(2, 16, 5)}), "'action' has dimension 5"),
        (lambda b: b.update({"task": ["pick", "  "]}), "Empty task"),
    ],
    ids=["missing-camera", "state-dim", "action-dim", "empty-task"],
)
def test_bad_batches_name_the_key_and_the_fix(backbone, mutate, message):
    policy = RoboAlignPolicy(make_config(backbone))
    batch = make_batch()
    mutate(batch)
    with pytest.raises((KeyError, ValueError), match=message) as error:
        policy.forward(batch)
    assert "Fix:" in str(error.value)


def test_missing_backbone_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="make-tiny-backbone"):
        RoboAlignPolicy(make_config(tmp_path / "no_such_backbone"))


def test_vlm_layer_beyond_the_backbone_is_a_clear_error(backbone):
    with pytest.raises(ValueError, match="--policy.vlm_layer"):
        RoboAlignPolicy(make_config(backbone, vlm_layer=99))


def test_checkpoint_round_trip_excludes_frozen_backbone_and_reloads(backbone, tmp_path):
    torch.manual_seed(0)
    policy = RoboAlignPolicy(make_config(backbone)).eval()
    policy.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith(("head.", "image_token_norm.")) for k in keys)
    reloaded = RoboAlignPolicy.from_pretrained(tmp_path)
    obs = observation(make_batch())
    torch.manual_seed(1)
    expected = policy.predict_action_chunk(obs)
    torch.manual_seed(1)
    assert torch.equal(reloaded.predict_action_chunk(obs), expected)


def test_image_token_statistics_are_learned_saved_and_reloaded(backbone, tmp_path):
    torch.manual_seed(0)
    policy = RoboAlignPolicy(make_config(backbone))
    batch = make_batch()
    train_steps(policy, batch, steps=3)
    norm = policy.image_token_norm
    assert norm.seen.item() == 3 * 2 and norm.mean.abs().sum() > 0
    assert norm.mean.shape[0] == policy.backbone.image_token_count(len(CAMERAS))
    policy.predict_action_chunk(observation(batch))  # eval: the statistics stay as trained
    assert norm.seen.item() == 6
    policy.save_pretrained(tmp_path)
    reloaded = RoboAlignPolicy.from_pretrained(tmp_path)
    for name in ("mean", "var", "seen"):
        assert torch.equal(getattr(reloaded.image_token_norm, name), getattr(norm, name)), name


def test_a_checkpoint_from_before_standardisation_loads_as_it_was_trained(backbone, tmp_path, caplog):
    """Its head saw raw features; the identity statistics pass them through unchanged."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    RoboAlignPolicy(make_config(backbone)).save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if k.startswith("head.")}, tmp_path / "model.safetensors")
    reloaded = RoboAlignPolicy.from_pretrained(tmp_path)
    assert "predates image-token standardisation" in caplog.text
    count = reloaded.image_token_norm.mean.shape[0]
    features = torch.randn(2, count + 3, reloaded.backbone.hidden_size)
    image_tokens = torch.zeros(2, count + 3, dtype=torch.bool)
    image_tokens[:, 1 : 1 + count] = True
    assert torch.equal(reloaded.standardize_image_tokens(features, image_tokens), features)


def test_only_image_tokens_are_standardised(backbone):
    policy = RoboAlignPolicy(make_config(backbone)).train()
    count = policy.image_token_norm.mean.shape[0]
    features = 3 + torch.randn(4, count + 5, policy.backbone.hidden_size)
    image_tokens = torch.zeros(4, count + 5, dtype=torch.bool)
    image_tokens[:, 2 : 2 + count] = True
    out = policy.standardize_image_tokens(features, image_tokens)
    assert torch.equal(out[~image_tokens], features[~image_tokens])
    assert out[image_tokens].mean().abs() < 0.1 and not torch.equal(out[image_tokens], features[image_tokens])
    assert RoboAlignPolicy(make_config(backbone, standardize_image_tokens=False)).image_token_norm is None


def test_incomplete_or_corrupt_checkpoints_are_clear_errors(backbone, tmp_path):
    policy = RoboAlignPolicy(make_config(backbone))
    policy.save_pretrained(tmp_path / "good")
    missing = tmp_path / "missing"
    shutil.copytree(tmp_path / "good", missing)
    (missing / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        RoboAlignPolicy.from_pretrained(missing)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tmp_path / "good", corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match="corrupt or truncated"):
        RoboAlignPolicy.from_pretrained(corrupt)


def test_checkpoint_refuses_a_different_backbone(backbone, tiny_backbone_factory, tmp_path):
    RoboAlignPolicy(make_config(backbone)).save_pretrained(tmp_path)
    other = RoboAlignConfig.from_pretrained(tmp_path)
    other.vlm_model_name = str(tiny_backbone_factory("qwen3_vl"))
    with pytest.raises(ValueError, match="trained on backbone"):
        RoboAlignPolicy.from_pretrained(tmp_path, config=other)


@pytest.mark.parametrize(
    ("arg", "message"),
    [("--rtc_mode=bad", "rtc_mode='bad'"), ("--n_action_steps=32", "n_action_steps \\(32\\) cannot exceed")],
)
def test_a_bad_field_on_the_command_line_is_named(arg, message, caplog):
    """draccus replaces the config's error by "Couldn't instantiate class": the reason must still reach the log."""
    import draccus

    with pytest.raises(draccus.utils.ParsingError), caplog.at_level("ERROR"):
        draccus.parse(RoboAlignConfig, args=[arg])
    assert any(re.search(message, record.getMessage()) for record in caplog.records)
