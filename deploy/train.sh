#!/bin/sh
# The compose `train` service: train MODEL into the checkpoints volume, replacing the previous run.
#   MODEL       model type (default mlp); MODEL_NAME: its registry name (default: MODEL)
#   SEED        training seed (default 1)
#   /data/names.txt, when it is a non-empty file (NAMES_FILE mounted there): the names to train on;
#               otherwise the default dataset (SSA names, shipped in the image)
#   TRAIN_ARGS  more `python -m training train` options, e.g. "--steps 5000 --n-embd 16"
#   TRAIN_THREADS  torch threads (default: one per core)
set -eu
if [ -n "${TRAIN_THREADS:-}" ]; then export OMP_NUM_THREADS="$TRAIN_THREADS"; fi
model=${MODEL:-mlp}
name=${MODEL_NAME:-$model}
set -- --model "$model" --out "/checkpoints/$name" --overwrite --seed "${SEED:-1}" --no-plots --quiet
if [ -d /data/names.txt ]; then  # compose made a volume or a folder of it: not a file on the host
    echo "error: NAMES_FILE must name a file on the host, as an absolute or ./relative path" >&2
    exit 2
elif [ -s /data/names.txt ]; then  # unset, NAMES_FILE is /dev/null: empty
    set -- "$@" --data /data/names.txt
fi
# TRAIN_ARGS is split on spaces on purpose: it holds several options.
# shellcheck disable=SC2086
exec python -m training train "$@" ${TRAIN_ARGS:-}
