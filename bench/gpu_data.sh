#!/usr/bin/env bash
# Copy what bench/gpu_session.sh reads into .gpu_data/ (git-ignored; `carry` it in a device
# run: ../shared does not travel). Two sets, as the 64 MiB carry allows:
#   MODE=train (default), about 57 MiB: the compact training caches (built here if .train/
#     has none), TG-119, seven OpenKBP validation cases (the two slowest to plan on the CPU
#     among them);
#   MODE=plan, about 20 MiB: TG-119 and all 33 validation cases (plans on every case).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared/data}
PY=${PY:-.venv/bin/python}
D=.gpu_data
MODE=${MODE:-train}
rm -rf "$D" && mkdir -p "$D/tg119" "$D/openkbp/train" "$D/openkbp/validation"
cp "$SHARED"/tg119/tg119.npz "$SHARED"/tg119/pyradplan_reference.npz "$D/tg119/"
if [ "$MODE" = plan ]; then
  cp "$SHARED"/openkbp/validation/pt_*.npz "$D/openkbp/validation/"
  du -sh "$D"
  exit 0
fi
for c in pt_201 pt_202 pt_203 pt_204 pt_206 pt_230 pt_233; do cp "$SHARED/openkbp/validation/$c.npz" "$D/openkbp/validation/"; done
for split in train validation; do
  if [ -f ".train/cache_hn_$split.npz" ]; then
    cp ".train/cache_hn_$split.npz" "$D/"
  else
    "$PY" -c "from core.prediction.cache import build_cache; build_cache('$SHARED/openkbp/$split', '$D/cache_hn_$split.npz', 'hn')"
  fi
done
du -sh "$D"
