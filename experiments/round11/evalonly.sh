#!/bin/bash
# evalonly.sh NAME PATH CORE: evaluate a model on dev (teacher, retry) and OOD, no first-attempt model.
set -e
NAME=$1; MPATH=$2; CORE=$3
cd /work/exp/code && source /work/exp/env.sh
taskset -c $CORE rl2f evaluate -S tracking.enabled=false -S model.base_dir=models/base_e10s \
  -S "eval.models=[]" -S "eval.extra_models={$NAME: $MPATH}" \
  -S 'eval.extra_model_modes=[teacher,retry]' -S 'eval.feedback_modes=[teacher,retry]' \
  -S eval.sycophancy_probe=false -S eval.episodes_dir=data/episodes/$NAME \
  -S eval.metrics_path=reports/$NAME.json -S eval.plots_dir=reports/plots_$NAME \
  -S eval.red_team_path=reports/red_$NAME.json
