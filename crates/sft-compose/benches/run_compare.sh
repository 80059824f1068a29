#!/usr/bin/env bash
# Runs the Rust grid benchmark and the Python `datasets` equivalent back to back and prints both
# JSON reports plus the wall-time ratio. Usage (from the workspace root):
#   crates/sft-compose/benches/run_compare.sh [DATA_DIR] [OUT_DIR]
set -euo pipefail
DATA=${1:-../shared/data}
OUT=${2:-target-compose/bench}
PY=${PYTHON:-/root/.cache/sft-compose/torch-venv/bin/python}
mkdir -p "$OUT"
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-compose} cargo build --release -q -p sft-compose --example bench_compose
BIN=${CARGO_TARGET_DIR:-target-compose}/release/examples/bench_compose
/usr/bin/time -v "$BIN" --data "$DATA" --json "$OUT/rust.json" 2> "$OUT/rust.time" >/dev/null
/usr/bin/time -v "$PY" crates/sft-compose/benches/grid_datasets.py --data "$DATA" --json "$OUT/python.json" 2> "$OUT/python.time" >/dev/null
"$PY" - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
r = json.load(open(f"{out}/rust.json")); p = json.load(open(f"{out}/python.json"))
print(json.dumps({"rust": r, "python_datasets": p,
                  "ratio_python_over_rust_best_wall": p["best"]["wall_s"] / r["grid"]["best_wall_s"]}, indent=2))
PY
