#!/usr/bin/env bash
# The standard LIBERO protocol with lerobot-eval: 4 suites x 10 tasks x 50 fixed initial states
# (500 episodes per suite), step limits 220 / 280 / 300 / 520, then the summary table and plot.
# Cameras at 256x256, the resolution the LIBERO training data was rendered at and openpi evaluates at
# (LeRobot's default is 360x360); override with RESOLUTION=... for a dataset rendered otherwise.
#   bash examples/libero/eval_all_suites.sh outputs/paper/libero/checkpoints/last/pretrained_model
set -euo pipefail
POLICY=${1:?usage: eval_all_suites.sh <checkpoint>/pretrained_model [output_root]}
OUT=${2:-outputs/eval/libero}
RESOLUTION=${RESOLUTION:-256}
export MUJOCO_GL=${MUJOCO_GL:-egl} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
declare -A MAX_STEPS=([libero_spatial]=220 [libero_object]=280 [libero_goal]=300 [libero_10]=520)
for SUITE in libero_spatial libero_object libero_goal libero_10; do
  lerobot-eval --policy.path="$POLICY" --env.type=libero --env.task="$SUITE" \
    --env.episode_length="${MAX_STEPS[$SUITE]}" --env.observation_height="$RESOLUTION" \
    --env.observation_width="$RESOLUTION" --eval.n_episodes=50 --eval.batch_size="${BATCH_SIZE:-10}" \
    --output_dir="$OUT/$SUITE"
done
python "$(dirname "$0")/aggregate.py" "$OUT"/libero_{spatial,object,goal,10} --output_dir="$OUT"
