#!/usr/bin/env bash
# `fluxsr eval` with every metric, on a (GPU) machine that has the [eval] extra (pyiqa) installed and
# network access once, for pyiqa's, LPIPS' and DISTS' weights (cached afterwards in ~/.cache and $TORCH_HOME).
#
#   bench/eval_gpu.sh PRED_DIR [GT_DIR] [realsr|drealsr|div2k-val]
#   bench/eval_gpu.sh --demo      # real photos (skimage) vs. blurred + noisy copies: checks the set-up
#
# Writes $OUT/per_image.csv and $OUT/results.json (OUT defaults to ./eval_out) and prints the table.
# Metrics that cannot load are listed as unavailable with the reason; the others still run.
set -euo pipefail

OUT=${OUT:-eval_out}
DEVICE=${DEVICE:-auto}
PY=${PYTHON:-python}
mkdir -p "$OUT"

echo "== environment"
$PY - <<'EOF'
import torch
cuda = torch.cuda.is_available()
print("torch", torch.__version__, "| cuda:", torch.cuda.get_device_name(0) if cuda else "none (CPU)")
try:
    import pyiqa
    print("pyiqa", getattr(pyiqa, "__version__", "?"))
except Exception as e:  # noqa: BLE001
    print(f"pyiqa not importable ({e}): only psnr, ssim, lpips-alex, lpips-vgg, dists will run; pip install 'fluxsr[eval]'")
EOF

if [[ "${1:-}" == "--demo" ]]; then
    echo "== demo folders in $OUT/demo"
    $PY - "$OUT/demo" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage import data
root = Path(sys.argv[1]); (root / "gt").mkdir(parents=True, exist_ok=True); (root / "pred").mkdir(exist_ok=True)
rng = np.random.default_rng(0)
for i, name in enumerate(["astronaut", "coffee", "chelsea", "rocket"]):
    img = getattr(data, name)().astype(np.float64) / 255
    deg = gaussian_filter(img, (1 + i * 0.5, 1 + i * 0.5, 0)) + rng.normal(0, 0.02, img.shape)
    for sub, arr in (("gt", img), ("pred", deg)):
        Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)).save(root / sub / f"{name}.png")
EOF
    set -- "$OUT/demo/pred" "$OUT/demo/gt"
fi

PRED=${1:?usage: bench/eval_gpu.sh PRED_DIR [GT_DIR] [DATASET] | --demo}
GT=${2:-}
DATASET=${3:-}
args=("$PRED" --device "$DEVICE" --csv "$OUT/per_image.csv" --json "$OUT/results.json" --overwrite)
[[ -n "$GT" ]] && args+=(--gt "$GT")
[[ -n "$DATASET" ]] && args+=(--dataset "$DATASET")

echo "== fluxsr eval ${args[*]}"
start=$(date +%s)
$PY -m fluxsr_cli eval "${args[@]}"
echo "== done in $(( $(date +%s) - start )) s; per-image results in $OUT/per_image.csv, $OUT/results.json"
