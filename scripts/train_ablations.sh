#!/usr/bin/env bash
# Issue 14's ablations at one equal training budget: the tiny stage-2 recipe (configs/tiny.yaml) and each
# ablation overlay, every one from the same committed stage-1 codec, data, seed, batch and number of steps,
# one after another (two CPU cores take one training run at a time). Each run resumes from its last
# checkpoint when started again, and is exported with the shipped model's 3D-cache refiner (the refiner
# only rewrites decoded frames of the same codec, so every model gets the same render path); the no-depth
# model has no 3D cache (nothing to render without depth) and is exported without it.
#
#   scripts/train_ablations.sh                       # 500 steps each in runs/ablations/NAME, exports in ablations/NAME
#   STEPS=3592 scripts/train_ablations.sh            # the shipped model's budget (~2 h each on two cores)
#   NAMES="base channel_history" scripts/train_ablations.sh
#   ACCEL=gpu STEPS=3592 scripts/train_ablations.sh  # minutes each on one CUDA GPU
#
# Then one command makes every table and plot (MODEL_CARD.md):
#   deepverse eval --compare shipped=shipped base=ablations/base channel_history=ablations/channel_history \
#     no_memory=ablations/no_memory no_depth=ablations/no_depth --frames 120 --out eval_ablations
#
# Variables: STEPS (500), NAMES ("base channel_history no_memory no_depth"), RUNS (runs/ablations: the training runs),
# EXPORTS (ablations: the exports, weights stored in float16, ~15 MB each, committed), ACCEL (cpu),
# TRAIN (the deepverse-train command), REFINER (world_model/pretrained/tiny: the export whose refiner is reused).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS="${STEPS:-500}"
NAMES="${NAMES:-base channel_history no_memory no_depth}"
RUNS="${RUNS:-runs/ablations}"
EXPORTS="${EXPORTS:-ablations}"
ACCEL="${ACCEL:-cpu}"
TRAIN="${TRAIN:-.venv/bin/deepverse-train}"
REFINER="${REFINER:-world_model/pretrained/tiny}"

for name in $NAMES; do
  args=(--config configs/tiny.yaml)
  if [ "$name" != base ]; then
    [ -f "configs/ablation_$name.yaml" ] || { echo "unknown ablation '$name': expected base or one of configs/ablation_*.yaml" >&2; exit 2; }
    args+=(--config "configs/ablation_$name.yaml")
  fi
  run="$RUNS/$name"
  if [ -f "$EXPORTS/$name/model.safetensors" ]; then echo "== $name: exported already ($EXPORTS/$name)"; continue; fi
  [ -f "$run/checkpoints/last.ckpt" ] && args+=(--ckpt_path last)  # a second start resumes the run
  echo "== $name: $STEPS steps ($(date +%T))"
  $TRAIN fit "${args[@]}" --trainer.default_root_dir "$run" --trainer.max_steps "$STEPS" \
    --trainer.val_check_interval "$(( STEPS / 2 ))" --trainer.accelerator "$ACCEL" --trainer.devices 1 \
    --trainer.enable_progress_bar false
  refiner=(--refiner "$REFINER")
  [ "$name" = no_depth ] && refiner=()
  $TRAIN export --ckpt "$run/checkpoints/last.ckpt" --out "$EXPORTS/$name" --dtype float16 "${refiner[@]}"
  echo "== $name: exported ($(date +%T))"
done
