"""The flow-matching head (action_head.py) learns chunks it can then sample, short episodes included."""

import torch

from lerobot_roboalign.action_head import ActionHeadSpec, FlowMatchingActionHead

CHUNK, EPISODE_END, STATE_DIM, ACTION_DIM = 8, 3, 3, 2


def short_episode_chunks(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chunks that depend on the state, from frames 3 steps before an episode's end: LeRobot pads the rest of
    each chunk with the last action (the arm holds) and marks it ``action_is_pad``."""
    state = torch.randn(n, STATE_DIM, generator=generator)
    weights = torch.randn(EPISODE_END, STATE_DIM, ACTION_DIM, generator=torch.Generator().manual_seed(7))
    real = torch.einsum("ns,ksa->nka", state, weights) / 2
    actions = torch.cat([real, real[:, -1:].expand(n, CHUNK - EPISODE_END, ACTION_DIM)], dim=1)
    is_pad = torch.arange(CHUNK).expand(n, CHUNK) >= EPISODE_END
    return state, actions, is_pad


def test_a_head_trained_on_padded_chunks_samples_their_real_steps():
    """Training must condition each step on the same chunk as sampling does: hiding the padded tail in training
    while sampling shows it gave chunks worse than predicting zero on the very frames it was trained on."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    spec = ActionHeadSpec(feature_dim=4, state_dim=STATE_DIM, action_dim=ACTION_DIM, chunk_size=CHUNK,
                          hidden_size=32, num_layers=2, num_heads=4, num_inference_steps=8)  # fmt: skip
    head = FlowMatchingActionHead(spec)
    features, mask = torch.zeros(256, 1, 4), torch.ones(256, 1, dtype=torch.bool)
    state, actions, is_pad = short_episode_chunks(256, generator)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    for step in range(400):
        batch = torch.randint(256, (64,), generator=generator)
        loss = head.loss(features[batch], mask[batch], state[batch], actions[batch], is_pad[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sampled = head.eval().sample(features, mask, state)
    error = ((sampled[:, :EPISODE_END] - actions[:, :EPISODE_END]) ** 2).mean()
    assert error < 0.2 * (actions[:, :EPISODE_END] ** 2).mean()
