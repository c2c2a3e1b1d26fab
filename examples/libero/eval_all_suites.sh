#!/usr/bin/env bash
# The standard LIBERO protocol with lerobot-eval: 4 suites x 10 tasks x 50 fixed initial states
# (500 episodes per suite), step limits 220 / 280 / 300 / 520, then the summary table and plot.
# Cameras at 256x256, the resolution the LIBERO training data was rendered at and openpi evaluates at
# (LeRobot's default is 360x360); override with RESOLUTION=... for a dataset rendered otherwise.
#   bash examples/libero/eval_all_suites.sh outputs/paper/libero/checkpoints/last/pretrained_model
# Smaller runs (a check, not the protocol): SUITES="libero_spatial" TASK_IDS="[0]" N_EPISODES=1 BATCH_SIZE=1
# MAX_STEPS=20 (TASK_IDS: which of each suite's 10 tasks; MAX_STEPS caps every suite's step limit).
set -euo pipefail
POLICY=${1:?usage: eval_all_suites.sh <checkpoint>/pretrained_model [output_root]}
OUT=${2:-outputs/eval/libero}
RESOLUTION=${RESOLUTION:-256}
SUITES=${SUITES:-libero_spatial libero_object libero_goal libero_10}
N_EPISODES=${N_EPISODES:-50}
BATCH_SIZE=${BATCH_SIZE:-10}
MAX_STEPS=${MAX_STEPS:-520}
export MUJOCO_GL=${MUJOCO_GL:-egl} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
declare -A LIMIT=([libero_spatial]=220 [libero_object]=280 [libero_goal]=300 [libero_10]=520)
RUNS=()
for SUITE in $SUITES; do
  STEPS=$(( LIMIT[$SUITE] < MAX_STEPS ? LIMIT[$SUITE] : MAX_STEPS ))
  lerobot-eval --policy.path="$POLICY" --env.type=libero --env.task="$SUITE" \
    --env.episode_length="$STEPS" --env.observation_height="$RESOLUTION" \
    --env.observation_width="$RESOLUTION" --eval.n_episodes="$N_EPISODES" --eval.batch_size="$BATCH_SIZE" \
    ${TASK_IDS:+--env.task_ids="$TASK_IDS"} --output_dir="$OUT/$SUITE"
  RUNS+=("$OUT/$SUITE")
done
python "$(dirname "$0")/aggregate.py" "${RUNS[@]}" --output_dir="$OUT"
