#!/usr/bin/env bash
# One command for the GPU paths, about 8 minutes on one GPU; ends with one Markdown table.
#
#   bash benchmarks/device_check.sh            # on the GPU machine (sources .device/env.sh when present)
#   bash benchmarks/device_check.sh --tiny     # a dry run of every part at tiny sizes (CPU is fine)
#
# Parts: train_step at 224 px bf16 channels_last (endpoints + references, eager and compile),
# loop_overhead at 64 and 224 px, the input pipeline per worker (CPU path), with the GPU path's batch
# augmentation on the GPU (data.augment_on=gpu), and data.decode_on=gpu's batch JPEG decode + crop
# against one CPU worker; the main job for 3 epochs on each data path (JPEG decode per epoch, in
# memory, in memory with data.augment_on=gpu), and the GPU-marked tests (pytest -m gpu).
# Without CUDA the GPU parts are marked "not run" (--tiny runs them on the CPU, to try the script). Each part has a time cap, runs in its own process
# group (killed with it, loader workers included) and writes $OUT/<part>.log; a failing part does
# not stop the others. $OUT defaults to ./device_check_out; CAP_SCALE multiplies every cap.
set -uo pipefail
cd "$(dirname "$0")/.."
TINY=0
[[ "${1:-}" == "--tiny" ]] && TINY=1
OUT="${OUT:-$PWD/device_check_out}"
CAP_SCALE="${CAP_SCALE:-1}"  # e.g. 5 for --tiny on a slow or shared CPU: the caps are sized for the GPU machine
mkdir -p "$OUT"
[[ -f .device/env.sh ]] && source .device/env.sh
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE="${WANDB_MODE:-disabled}"

CUDA=$(python -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
DEVICE=$(python -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" 2>/dev/null)
ROWS=()

row() {  # part status seconds figure
  ROWS+=("| $1 | $2 | $3 | $4 |")
  echo "[device_check] $1: $2 (${3}s)" >&2
}

part() {  # name cap_seconds command...: run it capped (x CAP_SCALE), in its own process group
  local name=$1 cap=$(($2 * CAP_SCALE)) start=$SECONDS rc status
  shift 2
  setsid timeout -k 10 "$cap" "$@" > "$OUT/$name.log" 2>&1 &
  local pid=$!
  wait "$pid"
  rc=$?
  kill -KILL -- "-$pid" 2>/dev/null  # what the part left behind (loader workers, compile workers)
  case $rc in
    0) status=ok ;;
    124|137) status="timed out (cap ${cap}s)" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  row "$name" "$status" "$((SECONDS - start))" "$(figure "$name")"
}

gpu_part() {  # like part; without CUDA "not run", unless --tiny tries it on the CPU
  if [[ $CUDA == 1 || $TINY == 1 ]]; then part "$@"; else row "$1" "not run (no CUDA)" 0 "–"; fi
}

figure() {  # one short figure from a part's log or result
  local log="$OUT/$1.log"
  case $1 in
    main_job_*)
      python - "$OUT/runs/$1" <<'EOF' 2>/dev/null || echo "–"
import json, pathlib, sys
r = json.loads(next(pathlib.Path(sys.argv[1]).rglob("result.json")).read_text())
print(f"{r['train_img_per_s']} img/s, top-1 {r['top1']:.1f}, {r['wall_s']} s")
EOF
      ;;
    pytest_gpu) tail -n 1 "$log" | tr -d '=' | xargs ;;
    *) grep -c '^| ' "$log" | sed 's/$/ table rows (see log)/' ;;
  esac
}

if [[ $TINY == 1 ]]; then
  DEV=(--device cpu --precision fp32)
  STEP=(--sizes 32 --rungs resnet50 --width-mult 0.25 --num-classes 10 --batch 2 --steps 1 --warmup 0
        --formats channels_last)
  LOOP=(--steps 2 --trials 1 --batch 8)
  PIPE=(--images 8 --chunk 4 --rounds 2 --source-size 96 --sizes 64,96)
  DECODE=(--images 8 --chunk 4 --rounds 2 --source-size 96 --sizes 96 --decode-device cpu --gpu-batch 8)
  MAIN=(experiment=smoke "data.root=${ROADMAP_DATA_DIR:-../shared/data}/imagenette2-64-mini" recipe.epochs=1
        trainer.limit_val_batches=2)
  SIZES=(32 48)
  AUG_DEVICE=cpu
else
  DEV=(--device cuda --precision bf16)
  STEP=(--sizes 224 --rungs endpoints --batch 128 --ref-steps 5 --warmup 2 --formats channels_last)
  LOOP=(--steps 16 --trials 3)
  PIPE=(--rounds 10)
  DECODE=(--rounds 10 --sizes 224)
  MAIN=(experiment=imagenette_proxy recipe.epochs=3)
  SIZES=(64 224)
  AUG_DEVICE=cuda
fi

gpu_part train_step_eager 90 python benchmarks/train_step.py "${DEV[@]}" "${STEP[@]}"
gpu_part train_step_compile 150 python benchmarks/train_step.py "${DEV[@]}" "${STEP[@]}" --compile
for size in "${SIZES[@]}"; do
  gpu_part "loop_overhead_$size" 60 python benchmarks/loop_overhead.py "${DEV[@]}" --channels-last --size "$size" "${LOOP[@]}"
done
part input_pipeline_cpu 45 python benchmarks/input_pipeline.py "${PIPE[@]}" --gpu-path none
gpu_part input_pipeline_gpu 60 python benchmarks/input_pipeline.py "${PIPE[@]}" --gpu-path "$AUG_DEVICE"
gpu_part input_pipeline_gpu_decode 90 python benchmarks/input_pipeline.py --gpu-decode "${DECODE[@]}"
for memory in false true; do
  gpu_part "main_job_in_memory_$memory" 75 python -m roadmap.run step=separate_downsampling "${MAIN[@]}" \
    "data.in_memory=$memory" "output_root=$OUT/runs/main_job_in_memory_$memory" force=true
done
gpu_part main_job_augment_gpu 75 python -m roadmap.run step=separate_downsampling "${MAIN[@]}" \
  data.in_memory=true data.augment_on=gpu "output_root=$OUT/runs/main_job_augment_gpu" force=true
part pytest_gpu 90 python -m pytest -q -m gpu tests

{
  echo "## device check: $DEVICE, $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$([[ $TINY == 1 ]] && echo ', --tiny')"
  echo
  echo "| part | status | s | figure |"
  echo "|---|---|---:|---|"
  printf '%s\n' "${ROWS[@]}"
} | tee "$OUT/summary.md"
