"""Issue 26: each break a user met following the README, fixed where the user meets it."""

import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import draccus
import pytest
from lerobot.configs import PeftConfig, PreTrainedConfig
from lerobot.configs.train import TrainPipelineConfig

from lerobot_roboalign.align.data import AlignDataConfig
from lerobot_roboalign.calibration import main_check
from lerobot_roboalign.demo import QUICK, DemoSizes, Stages, parse_config

REPO = Path(__file__).resolve().parents[1]


def test_lerobot_train_config_needs_no_repo_id_without_a_push(monkeypatch, tmp_path):
    args = ["--policy.type=roboalign", "--dataset.repo_id=local/data", f"--output_dir={tmp_path / 'run'}"]
    monkeypatch.setattr(sys, "argv", ["lerobot-train", *args])
    cfg = draccus.parse(TrainPipelineConfig, args=args)
    cfg.validate()  # LeRobot's default push_to_hub=true raised "'repo_id' argument missing" here
    assert cfg.policy.push_to_hub is False


def run_plugin_import(*args: str) -> subprocess.CompletedProcess:
    """Import the plugin the way LeRobot's CLIs do, with ``args`` on the command line."""
    code = "import lerobot_policy_roboalign"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)


def test_an_unquoted_prompt_template_gets_the_quoting_advice_not_a_yaml_error():
    refused = run_plugin_import("--policy.prompt_template=Task: {task}.")
    assert refused.returncode != 0 and "ParserError" not in refused.stderr
    assert """--policy.prompt_template="'Task: {task}.'\"""" in refused.stderr
    assert run_plugin_import("--policy.prompt_template='Task: {task}.'").returncode == 0


def test_lerobot_train_gives_the_advice_for_an_unquoted_template():
    command = [str(Path(sys.executable).with_name("lerobot-train")), "--policy.type=roboalign",
               "--dataset.repo_id=local/data", "--policy.prompt_template=Task: {task}."]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode != 0 and "quote it inside the shell quotes" in result.stderr


def test_state_names_without_the_state_in_the_prompt_are_refused():
    with pytest.raises(ValueError, match="--dataset.include_state=true"):
        AlignDataConfig(repo_ids=["local/data"], state_names=["ee_x"])
    assert AlignDataConfig(repo_ids=["local/data"], include_state=True, state_names=["ee_x"]).state_names == ["ee_x"]


def test_quick_keeps_its_sizes_under_a_sizes_override():
    cfg = parse_config(["--quick", "--sizes.vla_steps=50", "--output_dir=x"])
    assert cfg.sizes == dataclasses.replace(QUICK, vla_steps=50)
    assert parse_config(["--quick"]).sizes == QUICK
    assert parse_config(["--sizes.vla_steps=50"]).sizes == DemoSizes(vla_steps=50)


@pytest.mark.parametrize("parallel", [1, 2])
def test_parallel_stages_bounds_the_stages_working_at_once(tmp_path, parallel):
    stages, running, peak, lock = Stages(tmp_path, parallel), [0], [0], threading.Lock()

    def work() -> dict:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        return {}

    threads = [threading.Thread(target=stages.run, args=(f"stage{i}", work, {})) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == parallel


def test_calibration_check_without_the_arm_type_names_the_flag(tmp_path):
    with pytest.raises(SystemExit, match=r"type is missing.*--robot\.type=so101_follower"):
        main_check([str(REPO / "calibration" / "so101_follower.json"), "--install=true", "--robot.id=arm"])


def test_peft_checkpoint_names_its_base_and_backbone_by_absolute_paths(tiny_qwen25_backbone, tmp_path, monkeypatch):
    """A fine-tuned checkpoint made with relative paths (as typed in the README) reloads from another directory."""
    from lerobot.configs.types import FeatureType, PolicyFeature

    from lerobot_roboalign.configuration_roboalign import RoboAlignConfig
    from lerobot_roboalign.modeling_roboalign import RoboAlignPolicy

    work = tmp_path / "work"
    (work / "outputs").mkdir(parents=True)
    (work / "outputs" / "tiny").symlink_to(tiny_qwen25_backbone, target_is_directory=True)
    monkeypatch.chdir(work)
    features = {"observation.images.front": PolicyFeature(FeatureType.VISUAL, (3, 32, 32)),
                "observation.state": PolicyFeature(FeatureType.STATE, (4,))}  # fmt: skip
    config = RoboAlignConfig(vlm_model_name="outputs/tiny", vlm_layer=2, head_hidden_size=32, head_num_layers=1,
                             head_num_heads=2, image_resolution=(56, 56), device="cpu", input_features=features,
                             output_features={"action": PolicyFeature(FeatureType.ACTION, (4,))})  # fmt: skip
    RoboAlignPolicy(config).save_pretrained(Path("outputs/base"))
    config = PreTrainedConfig.from_pretrained("outputs/base")
    config.pretrained_path = Path("outputs/base")  # as lerobot-train gets it from --policy.path
    policy = RoboAlignPolicy.from_pretrained("outputs/base", config=config)
    policy.wrap_with_peft(peft_cli_overrides=dataclasses.asdict(PeftConfig(r=4))).save_pretrained("outputs/finetune")
    adapter = json.loads((work / "outputs" / "finetune" / "adapter_config.json").read_text())
    monkeypatch.chdir(tmp_path)  # elsewhere: every stored path still resolves
    assert Path(adapter["base_model_name_or_path"]) == work / "outputs" / "base"
    backbone = json.loads((work / "outputs" / "base" / "config.json").read_text())["vlm_model_name"]
    assert Path(backbone).is_absolute() and Path(backbone).is_dir()
