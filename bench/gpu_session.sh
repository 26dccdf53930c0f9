#!/usr/bin/env bash
# One prepared session on a lent GPU (the device tool), about 9 minutes of it:
#   bash bench/gpu_data.sh                       # here, once: .gpu_data/
#   device run: bash bench/gpu_session.sh        # carry [".gpu_data"], timeout_s 590
# The device python has torch but neither pydicom nor PySide6; nothing below needs them.
# Everything lands in $OUT (at most 8 files come back): CUDA benchmarks of the dose engine
# and optimizer (TG-119, pt_201), prediction inference, and the GPU-preset training run
# (TRAIN_MIN minutes, default 5) with its model.
set -u
export PYTHONUNBUFFERED=1 OPENATP_SHARED_DATA=.gpu_data
O=${OUT:-out/gpu}; mkdir -p "$O"
D=.gpu_data
TRAIN_MIN=${TRAIN_MIN:-5}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())"
} > "$O/env.txt" 2>&1
# 1. dose-influence matrix and optimizer (cold, warm) on CUDA
timeout 150 python bench/optimizer.py --device cuda --case all --threads 4 \
  > "$O/bench_optimizer_cuda.json" 2> "$O/bench_optimizer_cuda.err"
# 2. prediction scores and inference time (shipped model) on the five carried validation cases
# (bench/prediction.py runs the CPU pass too, then CUDA when present)
timeout 120 python bench/prediction.py --data "$D/openkbp/validation" \
  > "$O/bench_prediction_cuda.json" 2> "$O/bench_prediction_cuda.err"
# 3. the GPU-preset model from the compact caches, checkpointed; its best weights come back
timeout $((TRAIN_MIN * 60 + 90)) python main.py train --site hn --data "$D/openkbp" --cache-dir "$D" \
  --out "$O/hn_gpu" --size gpu --device cuda --time-budget-min "$TRAIN_MIN" --n-val 5 \
  > "$O/train.log" 2>&1
cp "$O/hn_gpu/model.pt" "$O/hn_gpu_model.pt" 2>/dev/null
cp "$O/hn_gpu/train_log.jsonl" "$O/hn_gpu_train_log.jsonl" 2>/dev/null
rm -rf "$O/hn_gpu"
ls -la "$O"
