#!/usr/bin/env bash
# One command for the GPU paths, at most 7.5 minutes on one GPU (the caps below add up to 410 s, plus
# ~40 s of start-up margin: tests/test_benchmarks.py checks the sum); ends with one Markdown table.
#
#   bash benchmarks/device_check.sh            # on the GPU machine (sources .device/env.sh when present)
#   bash benchmarks/device_check.sh --tiny     # a dry run of every part at tiny sizes (CPU is fine)
#
# Parts: train_step at 224 px bf16 channels_last (endpoints + references eager; the ConvNeXt-T endpoint
# compiled), loop_overhead at 64 and 224 px (and at 64 px compiled with CUDA graphs,
# trainer.compile_mode=reduce-overhead), the input pipeline per worker (CPU path), with the GPU path's
# batch augmentation on the GPU (data.augment_on=gpu), and data.decode_on=gpu's batch JPEG decode + crop
# (alone, and feeding the GPU augmentation) against one CPU worker; the main job for 3 short epochs on
# each data path (JPEG decode per epoch, in memory, in memory with data.augment_on=gpu, GPU decode feeding
# GPU augmentation); two proxy rungs at once on the GPU (launcher.runs_per_device=2); and the GPU-marked
# tests (pytest -m gpu, the benchmark scripts' GPU cases left out: the parts above run them).
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

cuda_part() {  # like part; without CUDA "not run", --tiny included (the path itself needs CUDA)
  if [[ $CUDA == 1 ]]; then part "$@"; else row "$1" "not run (no CUDA)" 0 "–"; fi
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
    parallel_*)
      python - "$OUT/runs/$1" <<'EOF' 2>/dev/null || echo "–"
import json, pathlib, sys
rs = [json.loads(p.read_text()) for p in sorted(pathlib.Path(sys.argv[1]).rglob("result.json"))]
print(f"{len(rs)} rungs at once: " + " + ".join(f"{r['train_img_per_s']:.0f}" for r in rs)
      + f" img/s, {max(r['wall_s'] for r in rs)} s")
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
  COMPILED=("${STEP[@]}")
  LOOP=(--steps 2 --trials 1 --batch 8)
  PIPE=(--images 8 --chunk 4 --rounds 2 --source-size 96 --sizes 64,96)
  DECODE=(--images 8 --chunk 4 --rounds 2 --source-size 96 --sizes 96 --decode-device cpu --gpu-batch 8)
  MAIN=(experiment=smoke "data.root=${ROADMAP_DATA_DIR:-../shared/data}/imagenette2-64-mini" trainer.limit_val_batches=2)
  EPOCHS=1
  SMALL=32 LARGE=48
  AUG_DEVICE=cpu
else
  DEV=(--device cuda --precision bf16)
  STEP=(--sizes 224 --rungs endpoints --batch 128 --ref-steps 5 --warmup 2 --formats channels_last)
  # Compiling takes ~20-40 s a model: the ConvNeXt-T endpoint alone (its eager figure is in the row above).
  COMPILED=(--sizes 224 --rungs separate_downsampling --no-references --batch 128 --steps 5 --warmup 2
            --formats channels_last)
  LOOP=(--steps 16 --trials 3)
  PIPE=(--rounds 10)
  DECODE=(--rounds 10 --sizes 224)
  # 3 epochs of a third of the proxy's training set each (~35 steps of 128), a quarter of its validation.
  MAIN=(experiment=imagenette_proxy trainer.limit_train_batches=0.34 trainer.limit_val_batches=0.25)
  EPOCHS=3
  SMALL=64 LARGE=224
  AUG_DEVICE=cuda
fi

# Caps in seconds (x CAP_SCALE): 35+70+25+40+25+15+20+25+25+20+20+20+30+40 = 410.
gpu_part train_step_eager 35 python benchmarks/train_step.py "${DEV[@]}" "${STEP[@]}"
gpu_part train_step_compile 70 python benchmarks/train_step.py "${DEV[@]}" "${COMPILED[@]}" --compile
gpu_part "loop_overhead_$SMALL" 25 python benchmarks/loop_overhead.py "${DEV[@]}" --channels-last --size "$SMALL" "${LOOP[@]}"
gpu_part "loop_overhead_${SMALL}_reduce_overhead" 40 python benchmarks/loop_overhead.py "${DEV[@]}" --channels-last \
  --size "$SMALL" "${LOOP[@]}" --no-as-run --compile --compile-mode reduce-overhead
gpu_part "loop_overhead_$LARGE" 25 python benchmarks/loop_overhead.py "${DEV[@]}" --channels-last --size "$LARGE" "${LOOP[@]}"
part input_pipeline_cpu 15 python benchmarks/input_pipeline.py "${PIPE[@]}" --gpu-path none
gpu_part input_pipeline_gpu 20 python benchmarks/input_pipeline.py "${PIPE[@]}" --gpu-path "$AUG_DEVICE"
gpu_part input_pipeline_gpu_decode 25 python benchmarks/input_pipeline.py --gpu-decode "${DECODE[@]}"
gpu_part main_job_in_memory_false 25 python -m roadmap.run step=separate_downsampling "${MAIN[@]}" recipe.epochs=$EPOCHS \
  data.in_memory=false "output_root=$OUT/runs/main_job_in_memory_false" force=true
gpu_part main_job_in_memory_true 20 python -m roadmap.run step=separate_downsampling "${MAIN[@]}" recipe.epochs=$EPOCHS \
  data.in_memory=true "output_root=$OUT/runs/main_job_in_memory_true" force=true
gpu_part main_job_augment_gpu 20 python -m roadmap.run step=separate_downsampling "${MAIN[@]}" recipe.epochs=$EPOCHS \
  data.in_memory=true data.augment_on=gpu "output_root=$OUT/runs/main_job_augment_gpu" force=true
cuda_part main_job_decode_augment_gpu 20 python -m roadmap.run step=separate_downsampling "${MAIN[@]}" recipe.epochs=$EPOCHS \
  data.in_memory=false data.decode_on=gpu data.augment_on=gpu "output_root=$OUT/runs/main_job_decode_augment_gpu" force=true
rm -rf "$OUT/runs/parallel_runs_per_device_2"  # a sweep skips completed rungs
gpu_part parallel_runs_per_device_2 30 python -m roadmap.sweep +roadmap=all "roadmap.steps=[resnet50,separate_downsampling]" \
  "${MAIN[@]}" recipe.epochs=1 data.in_memory=true launcher=local_parallel launcher.max_parallel=2 \
  launcher.runs_per_device=2 "output_root=$OUT/runs/parallel_runs_per_device_2" force=true
part pytest_gpu 40 python -m pytest -q -m gpu tests --ignore=tests/test_benchmarks.py

{
  echo "## device check: $DEVICE, $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$([[ $TINY == 1 ]] && echo ', --tiny')"
  echo
  echo "| part | status | s | figure |"
  echo "|---|---|---:|---|"
  printf '%s\n' "${ROWS[@]}"
} | tee "$OUT/summary.md"
