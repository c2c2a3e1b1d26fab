"""The action queue of a chunking policy (``select_action``): chunk boundaries cross-faded, non-finite chunks dropped.

Control, not safety: the guard in safety.py bounds whatever this queue hands on; this queue keeps the policy's own
targets smooth, and tells the guard when it holds (a dropped chunk) so the arm stops where it is.
"""

from __future__ import annotations

import logging
from collections import deque

import torch

logger = logging.getLogger(__name__)


class ChunkBlender:
    """Action queue of a chunking policy that never emits a non-finite action nor a chunk-boundary jump.

    The policy asks :meth:`needs_chunk` every control step and, when true, pushes a freshly
    predicted chunk. A new chunk is requested while ``blend_steps`` actions of the previous
    one remain; those overlapping steps are cross-faded linearly from old to new.
    """

    def __init__(self, blend_steps: int = 0) -> None:
        if blend_steps < 0:
            raise ValueError(f"blend_steps must be >= 0 (got {blend_steps}); set it to 0 to disable blending.")
        self.blend_steps = blend_steps
        self._queue: deque[torch.Tensor] = deque()
        self._last: torch.Tensor | None = None
        self._hold: torch.Tensor | None = None  # the action repeated while chunks are dropped
        self.holding = False  # the last popped action is a hold, not a policy target
        self.dropped_chunks = 0

    def reset(self) -> None:
        self._queue.clear()
        self._last = None
        self._hold = None
        self.holding = False

    def needs_chunk(self) -> bool:
        return len(self._queue) <= self.blend_steps

    def push(self, chunk: torch.Tensor) -> None:
        """Queue a (B, T, A) chunk, blending its head into the previous chunk's remainder."""
        if not torch.isfinite(chunk).all():
            self.dropped_chunks += 1
            logger.warning(
                "RoboAlign safety: dropped an action chunk with non-finite values; "
                "finishing the previous chunk / holding the last action instead."
            )
            if not self._queue and self._last is not None:
                self._hold = self._last
                self._queue.append(self._hold)
            return
        new = list(chunk.unbind(dim=1))
        old = list(self._queue)
        overlap = min(len(old), len(new))
        for i in range(overlap):
            weight = (i + 1) / (overlap + 1)
            new[i] = (1 - weight) * old[i] + weight * new[i]
        self._queue = deque(new)

    def pop(self) -> torch.Tensor:
        """Next (B, A) action; raises if no finite action was ever produced."""
        if not self._queue:
            raise RuntimeError(
                "RoboAlign safety: the policy has produced no finite action chunk yet, so there is no safe "
                "target to hold. Check the checkpoint (NaN weights?) and the observation normalisation stats."
            )
        self._last = self._queue.popleft()
        self.holding = self._last is self._hold
        return self._last
