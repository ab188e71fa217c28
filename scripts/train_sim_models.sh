#!/usr/bin/env bash
# Reproduce the simulation models shipped in config/models/ for franka_pick_cube (sim):
#   franka_pick_cube_base.onnx    the embedded base policy (behaviour cloning, deliberately mediocre)
#   franka_pick_cube_reward.onnx  the success classifier (privileged "cube lifted" labels)
# CPU only, about half an hour on a 2-core machine (episodes run in simulated real time). Physics
# timing varies with the machine's load, so a rerun gives a similar, not a bit-identical, model.
#
#   scripts/train_sim_models.sh [DEMO_DIR]     (default /tmp/pld_demos; not kept in the repo)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEMOS="${1:-/tmp/pld_demos}"
# `pld train ...` once the sub-app is mounted; the module runs the same commands.
TRAIN=(scripts/in_env.sh python -m pld_ros.training.commands)

# 1. Scripted-expert demonstrations, seeds 0-44: noisy expert (2 mm and 0.01 rad of noise per
#    tick, a 4 mm grasp offset per episode), each starting from the home joints plus the
#    profile's random offset (supervisor.home_randomization, as the graph's resets); a success
#    runs on for 15 ticks of lifted cube, frames for the classifier. Episodes cut short by an arm
#    fault (franky's planner on a loaded machine) are not stored. Measured: 45/45 successes.
"${TRAIN[@]}" collect-demos --episodes 45 --out "$DEMOS/expert" --seed 0 --success-ticks 15 \
  --translation-noise 0.002 --rotation-noise 0.01 --grasp-offset 0.004

# 2. The base policy: behaviour cloning on the first 34 successful demonstrations (small ResNet-10,
#    12 epochs; sim_base_policy.BasePolicyConfig). The count sets how mediocre it is: measured on
#    the 30 evaluation layouts below, 20 demonstrations gave 4/20, 26 gave 6/20, 30 about 20 %,
#    34 gave 17/30 and 40 about 90 %.
"${TRAIN[@]}" sim-base-policy --demos "$DEMOS/expert" --out config/models/franka_pick_cube_base.onnx \
  --seed 0 --max-demos 34

# 3. The base policy's success rate over 30 episodes on layouts it was not trained on (an episode
#    cut short by an arm fault is replaced by the next seed). Measured for the shipped model:
#    17/30 = 57 % (seeds 100000-100029, no arm faults). Its rollouts, mostly failures of
#    the kind the classifier must not call success, are data for the classifier.
"${TRAIN[@]}" evaluate --policy config/models/franka_pick_cube_base.onnx --episodes 30 --seed 100000 \
  --out "$DEMOS/base_rollouts"

# 4. The success classifier on every frame of both (privileged labels), held-out precision and
#    recall printed. Measured for the shipped model: 0.991 / 0.967 at the 0.9 threshold.
"${TRAIN[@]}" sim-classifier --demos "$DEMOS/expert" --demos "$DEMOS/base_rollouts" \
  --out config/models/franka_pick_cube_reward.onnx --seed 0
