#!/bin/bash
# eval.sh CORE DEV NAME=PATH...: evaluate each model on the dev split in DEV (teacher and retry,
# 6 turns, 2 episodes a task), one thread on CORE; episodes in ep/NAME, metrics in reports/NAME.json.
set -e
CORE=$1; DEV=$2; shift 2
for spec in "$@"; do
  NAME=${spec%%=*}; MPATH=${spec#*=}
  start=$(date +%s)
  taskset -c "$CORE" rl2f evaluate -S tracking.enabled=false -S model.cpu_threads=1 \
    -S data.out_dir="$DEV" -S "eval.models=[]" -S "eval.extra_models={$NAME: $MPATH}" \
    -S 'eval.extra_model_modes=[teacher,retry]' -S 'eval.feedback_modes=[teacher,retry]' \
    -S eval.sycophancy_probe=false -S eval.episodes_dir=ep/$NAME \
    -S eval.metrics_path=reports/$NAME.json -S eval.plots_dir=reports/plots_$NAME \
    -S eval.red_team_path=reports/red_$NAME.json
  echo "EVAL $NAME $(( $(date +%s) - start )) s"
done
