#!/bin/bash
# r11.sh NAME CORE [train overrides...]: train models/NAME from models/base_e10s, then evaluate
# it on dev (teacher, retry) and OOD. Environment: RL2F_FIRST_MODEL, RL2F_OPREWARD,
# RL2F_MASK_FIRST as the variant needs (set by the caller).
set -e
NAME=$1; CORE=$2; shift 2
cd /work/exp/code && source /work/exp/env.sh
start=$(date +%s)
taskset -c $CORE rl2f train_rl2f -S tracking.enabled=false -S model.base_dir=${BASE:-models/base_e10s} \
  -S train.rl2f_dir=models/$NAME "$@"
echo "TRAIN_SECONDS $(( $(date +%s) - start ))"
taskset -c $CORE rl2f evaluate -S tracking.enabled=false -S model.base_dir=${BASE:-models/base_e10s} \
  -S "eval.models=[]" -S "eval.extra_models={$NAME: models/$NAME}" \
  -S 'eval.extra_model_modes=[teacher,retry]' -S 'eval.feedback_modes=[teacher,retry]' \
  -S eval.sycophancy_probe=false -S eval.episodes_dir=data/episodes/$NAME \
  -S eval.metrics_path=reports/$NAME.json -S eval.plots_dir=reports/plots_$NAME \
  -S eval.red_team_path=reports/red_$NAME.json
echo "ALL_SECONDS $(( $(date +%s) - start ))"
