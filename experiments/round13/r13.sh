#!/bin/bash
# r13.sh NAME CORE [distill overrides...]: distill models/NAME from the run's rl2f policy and
# its training episodes (distill.episodes_dir, data/episodes/train), then evaluate it in self
# mode on dev.
# Run in a scratch folder holding a finished run's models/, data/ and params.yaml, with dev/
# from mkdev.py; never in the folder whose eval_id numbers are reported.
set -e
NAME=$1; CORE=$2; shift 2
start=$(date +%s)
if [ "$NAME" != base ] && [ "$NAME" != rl2f ] && [ ! -d models/$NAME ]; then
  taskset -c $CORE rl2f distill -S tracking.enabled=false -S model.cpu_threads=1 \
    -S distill.out_dir=models/$NAME "$@"
fi
echo "DISTILL_SECONDS $(( $(date +%s) - start ))"
taskset -c $CORE rl2f evaluate -S tracking.enabled=false -S model.cpu_threads=1 -S data.out_dir=dev \
  -S "eval.models=[]" -S "eval.extra_models={$NAME: models/$NAME}" \
  -S 'eval.extra_model_modes=[self]' -S 'eval.feedback_modes=[self]' \
  -S eval.sycophancy_probe=false -S eval.episodes_dir=ep/$NAME \
  -S eval.metrics_path=reports/$NAME.json -S eval.plots_dir=reports/plots_$NAME \
  -S eval.red_team_path=reports/red_$NAME.json
echo "ALL_SECONDS $(( $(date +%s) - start ))"
