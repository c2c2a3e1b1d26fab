"""GR00T N1.5-style flow-matching action head.

A DiT over ``[state token, action tokens]`` whose blocks alternate cross-attention to the
backbone features with self-attention, conditioned on the flow time through adaptive
LayerNorm. Training samples the time from a Beta distribution that favours the noisy end
(GR00T's choice: the hard part of the trajectory is leaving pure noise); inference runs a
few Euler steps of the learned velocity field from noise (t=0) to the action (t=1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from .rtc import Inpainting


@dataclass(frozen=True)
class ActionHeadSpec:
    """Sizes of the head; filled from ``RoboAlignConfig`` and the dataset's features."""

    feature_dim: int
    state_dim: int
    action_dim: int
    chunk_size: int
    hidden_size: int = 512
    num_layers: int = 8
    num_heads: int = 8
    dropout: float = 0.0
    num_inference_steps: int = 4
    num_timestep_buckets: int = 1000
    beta_alpha: float = 1.5
    beta_beta: float = 1.0
    noise_s: float = 0.999


def sinusoidal_embedding(timesteps: Tensor, dim: int) -> Tensor:
    """Transformer-style sin/cos embedding of (integer) timesteps, shape (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=timesteps.device) / half)
    angles = timesteps.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class AdaLayerNorm(nn.Module):
    """LayerNorm whose scale and shift are predicted from the flow-time embedding."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False)
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: Tensor, time_embedding: Tensor) -> Tensor:
        scale, shift = self.modulation(time_embedding)[:, None].chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift


class DiTBlock(nn.Module):
    """Attention (cross to the backbone features, or self) then a feed-forward layer."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float, cross_attention: bool):
        super().__init__()
        self.cross_attention = cross_attention
        self.norm_attention = AdaLayerNorm(hidden_size)
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, dropout=dropout, batch_first=True)
        self.norm_ff = nn.LayerNorm(hidden_size)
        self.feed_forward = nn.Sequential(
            nn.Linear(hidden_size, 4 * hidden_size),
            nn.GELU(approximate="tanh"),
            nn.Dropout(dropout),
            nn.Linear(4 * hidden_size, hidden_size),
        )

    def forward(self, x: Tensor, time_embedding: Tensor, context: Tensor, context_pad: Tensor) -> Tensor:
        query = self.norm_attention(x, time_embedding)
        if self.cross_attention:
            attended, _ = self.attention(query, context, context, key_padding_mask=context_pad, need_weights=False)
        else:
            attended, _ = self.attention(query, query, query, need_weights=False)
        x = x + attended
        return x + self.feed_forward(self.norm_ff(x))


class FlowMatchingActionHead(nn.Module):
    """Predicts the velocity that carries noise to an action chunk, given backbone features."""

    def __init__(self, spec: ActionHeadSpec):
        super().__init__()
        self.spec = spec
        hidden = spec.hidden_size
        self.feature_projection = nn.Sequential(nn.LayerNorm(spec.feature_dim), nn.Linear(spec.feature_dim, hidden))
        self.state_encoder = (
            nn.Sequential(nn.Linear(spec.state_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            if spec.state_dim
            else None
        )
        self.action_in = nn.Linear(spec.action_dim, hidden)
        self.action_time_mix = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.time_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.position_embedding = nn.Embedding(spec.chunk_size + 1, hidden)
        self.blocks = nn.ModuleList(
            DiTBlock(hidden, spec.num_heads, spec.dropout, cross_attention=(i % 2 == 0))
            for i in range(spec.num_layers)
        )
        self.norm_out = AdaLayerNorm(hidden)
        self.action_out = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, spec.action_dim))
        self.time_distribution = torch.distributions.Beta(spec.beta_alpha, spec.beta_beta)

    def velocity(
        self,
        features: Tensor,
        feature_mask: Tensor,
        state: Tensor | None,
        noisy_actions: Tensor,
        time: Tensor,
    ) -> Tensor:
        """Velocity field v(x_t, t | features, state), shape (B, chunk, action_dim).

        Every action step attends to every other, in training as in sampling. Steps past the episode
        end (LeRobot pads them with the last action: the arm holds) stay visible in training too;
        hiding them there while sampling shows all 16 left a short task's chunks (8-11 steps of
        reach_and_close in a 16-step chunk) conditioned on a tail the head had never attended to.
        """
        buckets = (time * self.spec.num_timestep_buckets).long().clamp(max=self.spec.num_timestep_buckets - 1)
        time_embedding = self.time_mlp(sinusoidal_embedding(buckets, self.spec.hidden_size))
        action_tokens = self.action_in(noisy_actions)
        action_tokens = self.action_time_mix(
            torch.cat([action_tokens, time_embedding[:, None].expand_as(action_tokens)], dim=-1)
        )
        tokens = [action_tokens]
        if self.state_encoder is not None:
            tokens.insert(0, self.state_encoder(state)[:, None])
        x = torch.cat(tokens, dim=1)
        x = x + self.position_embedding.weight[: x.shape[1]]
        context = self.feature_projection(features)
        context_pad = ~feature_mask
        for block in self.blocks:
            x = block(x, time_embedding, context, context_pad)
        x = self.norm_out(x, time_embedding)
        return self.action_out(x[:, -self.spec.chunk_size :])

    def sample_time(self, batch_size: int, device: torch.device) -> Tensor:
        """t in (0, 1], Beta-distributed towards the noisy end as in GR00T N1.5."""
        sample = self.time_distribution.sample((batch_size,)).to(device)
        return (self.spec.noise_s - sample) / self.spec.noise_s

    def loss(
        self,
        features: Tensor,
        feature_mask: Tensor,
        state: Tensor | None,
        actions: Tensor,
        action_is_pad: Tensor | None,
    ) -> Tensor:
        """Flow-matching MSE on the velocity, ignoring padded steps past the episode end."""
        noise = torch.randn_like(actions)
        time = self.sample_time(actions.shape[0], actions.device)
        t = time[:, None, None]
        noisy = (1 - t) * noise + t * actions
        predicted = self.velocity(features, feature_mask, state, noisy, time)
        per_element = F.mse_loss(predicted, actions - noise, reduction="none")
        if action_is_pad is None:
            return per_element.mean()
        valid = (~action_is_pad).unsqueeze(-1).to(per_element.dtype)
        return (per_element * valid).sum() / (valid.sum() * actions.shape[-1]).clamp(min=1)

    @torch.no_grad()
    def sample(
        self, features: Tensor, feature_mask: Tensor, state: Tensor | None, inpainting: Inpainting | None = None
    ) -> Tensor:
        """Integrate the velocity field with ``num_inference_steps`` Euler steps.

        ``inpainting`` (Real-Time Chunking, see rtc.py) makes the chunk continue the actions of
        the previous one that are still being executed.
        """
        batch = features.shape[0]
        actions = torch.randn(batch, self.spec.chunk_size, self.spec.action_dim, device=features.device)
        if inpainting is not None:
            actions = inpainting.start(actions)
        steps = self.spec.num_inference_steps
        for step in range(steps):
            time = torch.full((batch,), step / steps, device=features.device)

            def velocity(x: Tensor, time: Tensor = time) -> Tensor:
                return self.velocity(features, feature_mask, state, x, time)

            v = velocity(actions) if inpainting is None else inpainting.velocity(actions, step / steps, velocity)
            actions = actions + v / steps
        return actions
