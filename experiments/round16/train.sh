#!/bin/bash
# train.sh SEED CORE [overrides...]: the default train_rl2f recipe for seed SEED at 600 steps, one
# thread on CPU core CORE, keeping every 120-step checkpoint in keep/ (the trainer keeps only the
# last two and deletes its checkpoint folder once it publishes the model). STAGE=train_single_turn
# trains the single-turn baseline instead (checkpoints in keep_single_turn/).
# Run in a scratch folder holding params.yaml, data/tasks and models/base of that seed.
set -e
S=$1; CORE=$2; shift 2
STAGE=${STAGE:-train_rl2f}
OUT=$([ "$STAGE" = train_rl2f ] && echo rl2f || echo single_turn)
KEEP=$([ "$STAGE" = train_rl2f ] && echo keep || echo keep_single_turn)
( while true; do
    for c in models/$OUT.checkpoints/checkpoint-*; do
      [ -f "$c/trainer_state.json" ] || continue
      n=$(basename "$c")
      [ -d "$KEEP/$n" ] || { sleep 5; mkdir -p $KEEP; cp -r "$c" "$KEEP/$n"; echo "kept $n $(date +%T)"; }
    done
    sleep 20
  done ) &
watcher=$!
trap 'kill $watcher' EXIT
start=$(date +%s)
taskset -c "$CORE" rl2f "$STAGE" -S tracking.enabled=false -S model.cpu_threads=1 \
  -S model.tiny.seed="$S" -S train.seed="$S" -S rollout.sampling.seed="$S" -S distill.seed="$S" \
  -S train.steps=600 -S train.save_steps=120 "$@"
echo "TRAIN_SECONDS $(( $(date +%s) - start ))"
