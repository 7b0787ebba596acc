#!/bin/sh
# The compose `export` service: publish the checkpoint `train` left in the checkpoints volume as a new
# version in the models volume (parity-checked, atomic); a running server switches to it by itself.
#   MODEL, MODEL_NAME as for train; KEEP: versions kept per name (default 5, LATEST is never deleted)
set -eu
if [ -n "${TRAIN_THREADS:-}" ]; then export OMP_NUM_THREADS="$TRAIN_THREADS"; fi
name=${MODEL_NAME:-${MODEL:-mlp}}
exec python -m export "/checkpoints/$name" --registry /models --name "$name" --keep "${KEEP:-5}"
