"""Fixtures shared by the CALVIN tests."""

import pytest


@pytest.fixture(scope="session")
def calvin_checkpoint(roboalign_checkpoint_factory):
    """A roboalign checkpoint from lerobot-train (1 step) on a dataset with CALVIN's 15-D state and 7-D action."""
    return roboalign_checkpoint_factory(
        steps=1,
        cameras=("image", "image2"),
        image_hw=(32, 32),
        state_dim=15,
        action_dim=7,
        num_episodes=2,
        episode_length=8,
    )
