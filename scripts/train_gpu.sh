#!/usr/bin/env bash
# The whole tiny recipe on one CUDA GPU (minutes there; hours on two CPU cores): record the data, train the
# codec, the world model and the cache refiner with the committed configs, export each stage.
#
#   scripts/train_gpu.sh                                    # on a GPU machine, into runs/ and OUT
#   ACCEL=cpu SCALE_STEPS=0.002 scripts/train_gpu.sh        # a few steps of every stage, to test the script on CPU
#
# Variables: ACCEL (gpu), PRECISION (bf16-mixed on gpu, 32 on cpu), SCALE_STEPS (1: the configs' max_steps),
# OUT (world_model/pretrained: the exports), RUNS (runs), DATA (data/sim). Weights files stay < 16 MiB each.
set -euo pipefail
cd "$(dirname "$0")/.."
ACCEL="${ACCEL:-gpu}"
PRECISION="${PRECISION:-$([ "$ACCEL" = gpu ] && echo bf16-mixed || echo 32)}"
SCALE_STEPS="${SCALE_STEPS:-1}"
OUT="${OUT:-world_model/pretrained}"
RUNS="${RUNS:-runs}"
DATA="${DATA:-data/sim}"
PY="${PY:-.venv/bin}"

steps() {  # the config's max_steps scaled, at least 2
  python3 - "$1" "$SCALE_STEPS" <<'PYEOF'
import sys, yaml
print(max(2, round(yaml.safe_load(open(sys.argv[1]))["trainer"]["max_steps"] * float(sys.argv[2]))))
PYEOF
}

stage() {  # stage CONFIG RUN EXPORT [extra args...]
  local config="$1" run="$2" export="$3"; shift 3
  local n; n="$(steps "$config")"
  [ -f "$RUNS/$run/checkpoints/last.ckpt" ] && set -- "$@" --ckpt_path last  # a second run resumes the stage
  "$PY/deepverse-train" fit --config "$config" --data.data_dir "$DATA" --trainer.default_root_dir "$RUNS/$run" \
    --trainer.accelerator "$ACCEL" --trainer.devices 1 --trainer.precision "$PRECISION" --trainer.max_steps "$n" \
    --trainer.val_check_interval "$(( n < 8 ? n : n / 4 ))" --trainer.enable_progress_bar false "$@"
  "$PY/deepverse-train" export --ckpt "$RUNS/$run/checkpoints/last.ckpt" --out "$export"
}

stage configs/tiny_codec.yaml tiny_codec "$OUT/tiny_codec"
stage configs/tiny.yaml tiny "$RUNS/tiny/export" --model.init_args.codec_weights "$OUT/tiny_codec"
stage configs/tiny_refiner.yaml tiny_refiner "$OUT/tiny" --model.init_args.init_weights "$RUNS/tiny/export"
ls -l "$OUT"/tiny*/model.safetensors
