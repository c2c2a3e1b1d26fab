"""Per-patch standardisation of the backbone's image tokens, from running statistics.

Why: each image token's features are dominated by what is always at its place in the frame
(table, arm base, background); the object that moves, and with it the right action, changes
them by a few per cent. The head's per-token LayerNorm keeps that constant part, and on small
data the flow-matching loss does not learn to look past it: on cached features of 300 SO-101
reach episodes the head sampled held-out chunks as well with the image as with the image tokens
zeroed (MSE 0.398 vs 0.400), and 0.152 once each patch was standardised (docs/demo/report.md).
Standardising every (patch, channel) by its mean and spread over the training data is what one
does to any other input feature; the statistics are buffers, saved with the head.
"""

import torch
from torch import Tensor, nn


class ImageTokenStandardizer(nn.Module):
    """``(tokens - mean) / std`` per (image token, channel), with running statistics updated in training.

    The first batches give the exact running average (momentum ``batch / seen``); later ones an
    exponential average (``min_momentum``) so that a backbone trained with LoRA is followed. Channels
    that barely vary are divided by at least ``std_floor`` times the typical spread, so noise in
    them is not blown up. Before any training the statistics are the identity (mean 0, var 1).
    """

    def __init__(self, num_tokens: int, dim: int, min_momentum: float = 0.01, std_floor: float = 0.1):
        super().__init__()
        self.min_momentum = min_momentum
        self.std_floor = std_floor
        self.register_buffer("mean", torch.zeros(num_tokens, dim))
        self.register_buffer("var", torch.ones(num_tokens, dim))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _update(self, tokens: Tensor) -> None:
        batch = tokens.shape[0]
        momentum = (batch / (self.seen + batch)).clamp(min=self.min_momentum)
        batch_mean = tokens.mean(0)
        batch_var = tokens.var(0, unbiased=False)
        shift = batch_mean - self.mean
        self.var.copy_((1 - momentum) * self.var + momentum * batch_var + momentum * (1 - momentum) * shift**2)
        self.mean.add_(momentum * shift)
        self.seen.add_(batch)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens: (B, num_tokens, dim) image-token features; returns them standardised."""
        if tokens.shape[1:] != self.mean.shape:
            raise ValueError(
                f"Got {tokens.shape[1]} image tokens of size {tokens.shape[2]} per sample; this head's statistics "
                f"are for {self.mean.shape[0]} of size {self.mean.shape[1]}. The camera count or the image "
                "resolution differs from training: use the checkpoint's --policy.image_resolution and cameras."
            )
        if self.training:
            self._update(tokens.detach().float())
        std = self.var.sqrt()
        std = torch.maximum(std, self.std_floor * std.mean()).clamp(min=1e-6)
        return (tokens - self.mean) / std
