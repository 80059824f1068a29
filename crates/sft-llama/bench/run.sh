#!/usr/bin/env bash
# Generation throughput of sft-llama vs transformers' generate, same prompts, same machine, same run.
#   crates/sft-llama/bench/run.sh [device] [dtype] [max_new] [batch sizes...]
# Needs LIBTORCH / LD_LIBRARY_PATH / SFT_ASSETS (eval "$(cargo xtask env)") and the project venv.
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
device="${1:-cpu}"; dtype="${2:-f32}"; max_new="${3:-64}"; shift $(( $# < 3 ? $# : 3 )) || true
batches=("${@:-1 16}")
model="${SFT_ASSETS:-/root/.cache/sft-compose/assets}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
prompts="$root/fixtures/models/smollm2-reference.json"
python="${SFT_PYTHON:-/root/.cache/sft-compose/torch-venv/bin/python}"
cd "$root"
cargo build -q --release -p sft-llama --example bench_generate
bin="${CARGO_TARGET_DIR:-$root/target}/release/examples/bench_generate"
echo "# $(date -u +%FT%TZ) $(nproc) cpus, load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$bin" "$model" "$prompts" "$device" "$dtype" "$max_new" ${batches[@]}
"$python" "$root/crates/sft-llama/bench/hf_generate.py" "$model" "$prompts" "$device" "$dtype" "$max_new" ${batches[@]}
echo "# done, load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
