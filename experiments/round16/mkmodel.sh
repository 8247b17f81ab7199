#!/bin/bash
# mkmodel.sh CHECKPOINT OUT: a checkpoint as a published policy folder: its weights, the
# tokenizer, and the base in first_attempt/ (what `publish` does with the frozen first attempt).
# FIRST=0 leaves first_attempt/ out (the single-turn baseline writes its own first attempts).
set -e
CK=$1; OUT=$2
mkdir -p "$OUT"
for f in config.json generation_config.json model.safetensors tokenizer.json tokenizer_config.json \
         chat_template.jinja; do
  if [ -f "$CK/$f" ]; then cp "$CK/$f" "$OUT/"; else cp "models/base/$f" "$OUT/"; fi
done
rm -rf "$OUT/first_attempt"
[ "${FIRST:-1}" = 0 ] || cp -r models/base "$OUT/first_attempt"
