#!/usr/bin/env bash
# The prepared checks for a lent GPU machine (python3 with CUDA torch, numpy, scipy, scikit-image,
# tifffile; no napari, no internet, no git history). Every stage has its own time limit and writes
# its output under $OUT, so a stage that fails or runs out of time leaves the others' results.
#
#   bash scripts/gpu_checks.sh checks     # CUDA tests, a pretraining smoke run, benchmarks (~5 min)
#   bash scripts/gpu_checks.sh pretrain STEPS SECONDS   # compare the target modes, ~5 min
#   bash scripts/gpu_checks.sh segment-pretrain SECONDS  # segment speed against a baseline,
#        a profile, the CUDA tests, then one pretraining run (~4 min + SECONDS + 1.5 min)
#
# Prepare here first (ignored by git, carried to the machine):
#   .gpu/vendor    pytest and its dependencies, unpacked wheels (the machine has no pytest)
#                  and edt (the cut of merged nuclei falls back to scipy's 2x slower distance
#                  without it; pick the wheel for the machine's Python)
#   .gpu/baseline  `git archive e43b0d5 src benchmarks` and a COMMIT file: bench_training's baseline
#   .gpu/seg_base  `git archive COMMIT src`: bench_segment's baseline (segment-pretrain)
#   .gpu/real      optional real annotated images (img2d.tif, mask2d.tif): reported, never trained on
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD/.gpu/vendor"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, output in $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "[$(date +%T)] $name (limit ${limit}s): $*" | tee -a "$OUT/log.txt"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    echo "[$(date +%T)] $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/log.txt"
    tail -n 25 "$OUT/$name.txt"
}
REAL=()
[ -f .gpu/real/img2d.tif ] && REAL=(--real .gpu/real/img2d.tif .gpu/real/mask2d.tif)

case "${1:-checks}" in
checks)
    nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
    $PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/torch.txt"
    stage test_cuda 150 $PY -m pytest -p no:cacheprovider -q tests/test_cuda.py
    stage smoke 90 $PY scripts/pretrain.py compare-targets -o "$OUT/smoke" --only boundary \
        --train-only --steps 200 --max-time 40 --images 24 --batch 16 --patch 256 \
        --validate-every 100 --device cuda --threads 8
    stage bench_segment 90 $PY benchmarks/bench_segment.py --device cuda --sizes 4096 --repeats 3
    stage bench_live 60 $PY benchmarks/bench_live.py --device cuda --seconds 25
    stage bench_training 150 $PY benchmarks/bench_training.py --device cuda --skip-curve \
        --baseline .gpu/baseline --json "$OUT/bench_training.json"
    ;;
pretrain)
    steps=${2:?steps}
    seconds=${3:?seconds}
    stage compare_train $((2 * seconds + 150)) $PY scripts/pretrain.py compare-targets \
        -o "$OUT/compare" --train-only --steps "$steps" --max-time "$seconds" --images 300 \
        --batch 16 --patch 256 --validate-every 500 --device cuda --threads 8
    stage compare_eval 120 $PY scripts/pretrain.py compare-targets -o "$OUT/compare" \
        --evaluate-only --eval-images 6 --device cuda "${REAL[@]}" --json "$OUT/compare.json"
    ;;
segment-pretrain)
    # at most 8 files come back from $OUT: keep to 7
    seconds=${2:?seconds}
    { nvidia-smi; $PY -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"; } \
        >>"$OUT/log.txt" 2>&1
    stage bench_segment 150 $PY benchmarks/bench_segment.py --device cuda --sizes 4096 \
        --repeats 1 --segment-repeats 3 --no-reference --baseline .gpu/seg_base \
        --variants auto:1x1 9:3x3
    stage profile 60 $PY benchmarks/profile_segment.py --device cuda --size 4096
    stage test_cuda 170 $PY -m pytest -p no:cacheprovider -q tests/test_cuda.py
    # one run at a time: two runs sharing an H100 made 5-6 steps/s each, where the run that
    # made default.pt alone on an H200 made 20 (not diagnosed further)
    # POOL_OPTS widens the pool, e.g. POOL_OPTS="--radius 3 26 --photons 3 3000"
    read -ra POOL <<<"${POOL_OPTS:-}"
    stage pretrain $((seconds + 150)) $PY scripts/pretrain.py train -o "$OUT/model.pt" \
        --steps 20000 --max-time "$seconds" --packed 0.5 --patch 256 --batch 16 --rotation 45 \
        --validate-every 1000 --threads 8 --device cuda --eval-images 6 --images 600 \
        --scale 0.7 1.4 --lr 0.003 --seed 2017 --checkpoint-dir /tmp/ckpt-pretrain "${POOL[@]}"
    ;;
*)
    echo "usage: $0 checks | pretrain STEPS SECONDS | segment-pretrain SECONDS" >&2
    exit 2
    ;;
esac
