"""``roboalign calvin eval``: the official CALVIN ABC->D evaluation of a LeRobot policy checkpoint.

    roboalign calvin eval --policy_path=outputs/calvin/checkpoints/last/pretrained_model \\
        --rename_map_file=examples/calvin/rename_map.json

1000 chains of 5 instructions (``protocol.sample_chains``), at most 360 steps per instruction,
early stop on failure. Each finished chain is appended to ``chains.jsonl`` in the output folder,
so an interrupted evaluation resumes where it stopped; the summary is written as
``results.json``, ``results.md`` and ``results.png``.
"""

import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import draccus
import numpy as np

from .protocol import ChainResult, State, evaluate_chains, sample_chains, summarize, write_results
from .scene import require_calvin

# Average completed length reported by the paper (Table: CALVIN ABC->D).
PAPER_AVERAGE_LENGTH = {
    "Qwen2.5-VL-7B base": 2.16,
    "language-only SFT": 2.32,
    "action-only SFT": 1.26,
    "RoboAlign without RL": 1.89,
    "RoboAlign": 2.57,
}
JOURNAL = "chains.jsonl"
logger = logging.getLogger(__name__)


@dataclass
class CalvinEvalConfig:
    # A LeRobot checkpoint folder (a `pretrained_model` directory written by lerobot-train).
    policy_path: str = ""
    # Empty: scene D from calvin_env's own configs. Or CALVIN's task_ABC_D download, to build scene D
    # from its validation/.hydra/merged_config.yaml as the official evaluation does.
    dataset_path: str | None = None
    # "egl" (how CALVIN's dataset was rendered) or "tiny" (pybullet's CPU TinyRenderer).
    renderer: str = "egl"
    num_chains: int = 1000
    max_steps_per_subtask: int = 360
    output_dir: str = "outputs/calvin_eval"
    # Simulator key -> the checkpoint's key, e.g. {"observation.images.rgb_static": "observation.images.image_base"}.
    rename_map: dict[str, str] = field(default_factory=dict)
    # A JSON file holding the rename map (merged under --rename_map).
    rename_map_file: str | None = None
    device: str | None = None

    def resolved_rename_map(self) -> dict[str, str]:
        from_file = json.loads(Path(self.rename_map_file).read_text()) if self.rename_map_file else {}
        return {**from_file, **self.rename_map}


class LeRobotChainPolicy:
    """A LeRobot policy + its processors as a ``protocol.ChainPolicy`` (one observation at a time)."""

    def __init__(self, policy, preprocessor, postprocessor):
        self.policy, self.preprocessor, self.postprocessor = policy, preprocessor, postprocessor

    def reset(self) -> None:
        """Called at every instruction, as the official evaluation resets its model per subtask:
        queued actions and any state in the processors (e.g. the safety step's last action) go."""
        self.policy.reset()
        self.preprocessor.reset()
        self.postprocessor.reset()

    def __call__(self, observation: dict[str, Any], instruction: str) -> np.ndarray:
        import torch
        from lerobot.envs.utils import preprocess_observation

        batch = preprocess_observation(observation)
        batch["task"] = [instruction]
        batch = self.preprocessor(batch)
        with torch.inference_mode():
            action = self.postprocessor(self.policy.select_action(batch))
        return action.reshape(-1).float().cpu().numpy()


def load_policy(cfg: CalvinEvalConfig, env_cfg) -> LeRobotChainPolicy:
    """Load the checkpoint as lerobot-eval does, after checking the env can feed it."""
    from lerobot.configs import PreTrainedConfig
    from lerobot.envs.utils import env_to_policy_features
    from lerobot.policies.factory import make_policy, make_pre_post_processors

    from .. import register
    from ..dataset_mapping import check_dataset_features

    register()  # `roboalign` imports nothing of LeRobot's until a command needs it: the policy type is registered here
    if not Path(cfg.policy_path).is_dir():
        raise FileNotFoundError(
            f"--policy_path={cfg.policy_path!r} is not a checkpoint folder: pass the "
            "`pretrained_model` directory written by lerobot-train."
        )
    policy_cfg = PreTrainedConfig.from_pretrained(cfg.policy_path)
    policy_cfg.pretrained_path = Path(cfg.policy_path)
    if cfg.device:
        policy_cfg.device = cfg.device
    rename_map = cfg.resolved_rename_map()
    check_dataset_features(policy_cfg, env_to_policy_features(env_cfg), rename_map, source="simulator")
    policy = make_policy(cfg=policy_cfg, env_cfg=env_cfg, rename_map=rename_map)
    policy.eval()
    preprocessor, postprocessor = make_pre_post_processors(
        policy_cfg=policy_cfg,
        pretrained_path=cfg.policy_path,
        preprocessor_overrides={
            "device_processor": {"device": str(policy.config.device)},
            "rename_observations_processor": {"rename_map": rename_map},
        },
    )
    return LeRobotChainPolicy(policy, preprocessor, postprocessor)


def load_journal(path: Path) -> list[ChainResult]:
    if not path.is_file():
        return []
    return [
        ChainResult(d["initial_state"], tuple(d["tasks"]), d["completed"], d["steps"])
        for d in map(json.loads, path.read_text().splitlines())
        if d
    ]


def remaining_chains(chains: list[tuple[State, tuple[str, ...]]], done: list[ChainResult]):
    """Chains not yet in the journal; the journal must be a prefix of this evaluation's chains."""
    mismatched = len(done) > len(chains) or any(
        (result.initial_state, result.tasks) != chain for result, chain in zip(done, chains, strict=False)
    )
    if mismatched:
        raise ValueError(
            "The output folder holds results of a different chain list: choose a new "
            "--output_dir or delete its chains.jsonl."
        )
    return chains[len(done) :]


def run_evaluation(env, policy, cfg: CalvinEvalConfig) -> dict[str, Any]:
    """Evaluate the chains not yet journaled, then summarise all of them."""
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    journal = output_dir / JOURNAL
    chains = sample_chains(cfg.num_chains)
    done = load_journal(journal)
    todo = remaining_chains(chains, done)
    if done:
        logger.info("Resuming: %d of %d chains already evaluated.", len(done), len(chains))

    def append(result: ChainResult) -> None:
        with journal.open("a") as f:
            f.write(json.dumps(asdict(result)) + "\n")

    results = done + evaluate_chains(env, policy, todo, cfg.max_steps_per_subtask, on_result=append)
    summary = summarize(results)
    write_results(summary, results, output_dir, reference=PAPER_AVERAGE_LENGTH)
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = draccus.parse(config_class=CalvinEvalConfig, args=sys.argv[1:] if argv is None else argv)
    if not cfg.policy_path:
        raise SystemExit(
            "roboalign calvin eval: pass --policy_path=<lerobot-train checkpoint/pretrained_model>."
        )
    require_calvin()  # before the (slow) checkpoint load
    from .env import CalvinChainEnv, CalvinEnv  # LeRobot and torch: not needed for --help

    env_cfg = CalvinEnv(
        dataset_path=cfg.dataset_path,
        num_chains=cfg.num_chains,
        max_steps_per_subtask=cfg.max_steps_per_subtask,
        renderer=cfg.renderer,
    )
    policy = load_policy(cfg, env_cfg)
    env = CalvinChainEnv(cfg.dataset_path, use_egl=env_cfg.renderer == "egl")
    try:
        summary = run_evaluation(env, policy, cfg)
    finally:
        env.close()
    print((Path(cfg.output_dir) / "results.md").read_text())
    return summary


if __name__ == "__main__":
    main()
