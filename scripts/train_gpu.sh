#!/usr/bin/env bash
# The whole tiny recipe on one CUDA GPU (minutes there; hours on two CPU cores): record the data, train the
# codec, the world model and the cache refiner (two phases) with the committed configs, export each stage.
# The steps and batches below are sized for one GPU (the configs' batches are for two CPU cores; the shipped
# model was trained on CPU). Measured on one H200 in fp32: codec ~9.4 steps/s at batch 16, world model
# ~6.3 steps/s at batch 32, so the whole recipe needs an estimated ~20 minutes: on a shorter lease, cap the stages
# (MAX_SECONDS_*; the cosine then follows the time) or run them in turns (STAGES, INIT_CODEC).
#
#   scripts/train_gpu.sh                                    # on a GPU machine, into runs/ and OUT
#   ACCEL=cpu SCALE_STEPS=0.002 scripts/train_gpu.sh        # a few steps of every stage, to test the script on CPU
#   OVERLAY=configs/tiny_grounded.yaml scripts/train_gpu.sh # the grounded world (issue 12): linear-path codec,
#                                                           # an MM-DiT that sees the 3D cache's render
#
# Variables: ACCEL (gpu), PRECISION (32), SCALE_STEPS (1), WORKERS (data loader processes, 8 on gpu),
# OUT (world_model/pretrained: the exports), RUNS (runs), DATA (data/sim), TRAIN (the deepverse-train
# command), MAX_SECONDS_<STAGE> (a wall-clock cap on a stage's training: CODEC, WORLD, REFINER, FINETUNE;
# the stage stops early, checkpoints and exports), STAGES ("codec world refiner finetune": the stages to run;
# one left out uses the export already in place), INIT_CODEC (continue the codec from this export), OVERLAY (a config
# added to every stage's, after it).
# Exports are 6-30 MB each (split them to carry them off a machine with a smaller file limit).
set -euo pipefail
cd "$(dirname "$0")/.."
ACCEL="${ACCEL:-gpu}"
PRECISION="${PRECISION:-32}"
SCALE_STEPS="${SCALE_STEPS:-1}"
WORKERS="${WORKERS:-$([ "$ACCEL" = gpu ] && echo 8 || echo 0)}"
OUT="${OUT:-world_model/pretrained}"
RUNS="${RUNS:-runs}"
DATA="${DATA:-data/sim}"
TRAIN="${TRAIN:-.venv/bin/deepverse-train}"
STAGES="${STAGES:-codec world refiner finetune}"

stage() {  # stage NAME CONFIG(S) RUN EXPORT STEPS BATCH [extra args...]
  local name="$1" configs="$2" run="$3" export="$4" steps="$5" batch="$6"; shift 6
  [[ " $STAGES " == *" $name "* ]] || { echo "== $name: skipped, using $export"; return; }
  local n; n="$(python3 -c "print(max(2, round($steps * $SCALE_STEPS)))")"
  local cap="MAX_SECONDS_${name^^}"
  local args=()
  for c in $configs ${OVERLAY:-}; do args+=(--config "$c"); done
  [ -f "$RUNS/$run/checkpoints/last.ckpt" ] && args+=(--ckpt_path last)  # a second run resumes the stage
  [ -n "${!cap:-}" ] && args+=(--trainer.max_time "$(printf '00:00:%02d:%02d' $(( ${!cap} / 60 )) $(( ${!cap} % 60 )))")
  echo "== $name: $n steps, batch $batch ($(date +%T))"
  $TRAIN fit "${args[@]}" --data.data_dir "$DATA" --data.batch_size "$batch" --data.num_workers "$WORKERS" \
    --trainer.default_root_dir "$RUNS/$run" --trainer.accelerator "$ACCEL" --trainer.devices 1 \
    --trainer.precision "$PRECISION" --trainer.max_steps "$n" --trainer.val_check_interval "$(( n < 8 ? n : n / 2 ))" \
    --trainer.enable_progress_bar false "$@"
  $TRAIN export --ckpt "$RUNS/$run/checkpoints/last.ckpt" --out "$export"
}

stage codec configs/tiny_codec.yaml tiny_codec "$OUT/tiny_codec" 3000 16 --data.collect_envs 32 \
  ${INIT_CODEC:+--model.init_args.init_weights "$INIT_CODEC"}
stage world configs/tiny.yaml tiny "$RUNS/tiny/export" 4000 32 --model.init_args.codec_weights "$OUT/tiny_codec"
stage refiner configs/tiny_refiner.yaml tiny_refiner "$RUNS/tiny_refiner/export" 1000 16 \
  --model.init_args.init_weights "$RUNS/tiny/export"
stage finetune "configs/tiny_refiner.yaml configs/tiny_refiner_finetune.yaml" tiny_refiner_finetune "$OUT/tiny" 300 16 \
  --model.init_args.init_weights "$RUNS/tiny_refiner/export"
ls -l "$OUT"/tiny*/model.safetensors
