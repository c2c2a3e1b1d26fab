"""ImageTokenStandardizer: running statistics, and why the head needs them."""

import pytest
import torch

from lerobot_roboalign.action_head import ActionHeadSpec, FlowMatchingActionHead
from lerobot_roboalign.feature_norm import ImageTokenStandardizer

TOKENS, DIM = 4, 16


def patch_features(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Features whose every patch carries a large fixed pattern and, at one patch, a small varying target."""
    background = 10 * torch.randn(TOKENS, DIM, generator=torch.Generator().manual_seed(123))
    target = torch.rand(n, 2, generator=generator) * 2 - 1
    direction = torch.randn(2, DIM, generator=torch.Generator().manual_seed(321))
    features = background.expand(n, TOKENS, DIM).clone()
    features[:, 2] += 0.3 * target @ direction
    features += 0.01 * torch.randn(features.shape, generator=generator)
    return features, target


def test_running_statistics_match_the_data_and_standardise_it():
    norm = ImageTokenStandardizer(TOKENS, DIM).train()
    data = 5 + 3 * torch.randn(400, TOKENS, DIM, generator=torch.Generator().manual_seed(0))
    for batch in data.split(8):
        norm(batch)
    assert norm.seen.item() == 400
    torch.testing.assert_close(norm.mean, data.mean(0), atol=0.05, rtol=0)
    torch.testing.assert_close(norm.var, data.var(0, unbiased=False), atol=0.1, rtol=0)
    standardised = norm.eval()(data)
    assert standardised.mean(0).abs().max() < 0.05
    assert (standardised.std(0) - 1).abs().max() < 0.05


def test_identity_before_training_and_frozen_in_eval():
    norm = ImageTokenStandardizer(TOKENS, DIM).eval()
    x = torch.randn(3, TOKENS, DIM)
    assert torch.equal(norm(x), x)
    assert norm.seen.item() == 0 and torch.equal(norm.mean, torch.zeros(TOKENS, DIM))


def test_a_constant_channel_is_not_blown_up():
    norm = ImageTokenStandardizer(TOKENS, DIM).train()
    data = torch.randn(64, TOKENS, DIM)
    data[:, 0, 0] = 7.0  # never varies in training
    norm(data)
    shifted = data[:1].clone()
    shifted[:, 0, 0] += 1.0  # varies at test time
    assert norm.eval()(shifted)[0, 0, 0].abs() < 20


def test_wrong_token_count_names_the_fix():
    with pytest.raises(ValueError, match="image_resolution"):
        ImageTokenStandardizer(TOKENS, DIM)(torch.randn(2, TOKENS + 1, DIM))


def sampled_error(standardize: bool, steps: int = 200) -> float:
    """Held-out error of a head trained on ``patch_features``, with its targets as the action chunk."""
    torch.manual_seed(0)
    head = FlowMatchingActionHead(
        ActionHeadSpec(feature_dim=DIM, state_dim=0, action_dim=2, chunk_size=4, hidden_size=32, num_layers=2, num_heads=4)
    )
    norm = ImageTokenStandardizer(TOKENS, DIM)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    mask = torch.ones(32, TOKENS, dtype=torch.bool)
    for _ in range(steps):
        features, target = patch_features(32, generator)
        features = norm.train()(features) if standardize else features
        loss = head.loss(features, mask, None, target[:, None].expand(-1, 4, -1), None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    features, target = patch_features(256, torch.Generator().manual_seed(2))
    features = norm.eval()(features) if standardize else features
    torch.manual_seed(3)
    sampled = head.sample(features, torch.ones(256, TOKENS, dtype=torch.bool), None)
    return (sampled - target[:, None]).pow(2).mean().item()


def test_the_head_reads_a_small_change_on_a_large_fixed_pattern_only_when_standardised():
    """A cube moving on a fixed table, in miniature. Same training budget for both; an error of about 2/3
    (two independent draws of the target, variance 1/3 each) means the head ignored the features."""
    standardised, raw = sampled_error(True), sampled_error(False)
    assert standardised < 0.15, standardised
    assert raw > 3 * standardised, (raw, standardised)
