#!/usr/bin/env bash
# Peak memory of one training process against the estimate (issue 14): SmolLM2-135M-Instruct
# (the GGUF asset), 4 synthetic conversations truncated to 2048 tokens, micro-batch 2, 2 steps
# (the second step has every gradient buffer allocated, as every later step does), f32 on the
# CPU, with and without activation checkpointing and the chunked loss (256 positions per row).
# Prints one JSON object per configuration: the estimate (`train --estimate`), the measured
# peak RSS (GNU time's maxrss) and their ratio.
#
#   eval "$(cargo xtask env)"; cargo build -p sft-examples --example train
#   crates/sft-train/bench/memory.sh [path/to/train] > bench/results/train-memory.jsonl
set -euo pipefail
TRAIN=${1:-${CARGO_TARGET_DIR:-target}/debug/examples/train}
MODEL=${SFT_ASSETS:?run eval "\$(cargo xtask env)"}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 - "$WORK/long.jsonl" <<'PY'
import json, random, sys
random.seed(0)
words = ("the of and to in is that for it as was with be by on not he this are or his from at "
         "which but have an they you were her she there been one all we their has would when if "
         "so no will more can out up who them some into said could time").split()
with open(sys.argv[1], "w") as f:
    for i in range(4):
        q = " ".join(random.choice(words) for _ in range(200))
        a = " ".join(random.choice(words) for _ in range(2400))
        f.write(json.dumps({"id": f"long-{i}", "source": "general", "messages": [
            {"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")
PY
for cfg in "false 0" "true 0" "false 256" "true 256"; do
  set -- $cfg
  args=(--model "$MODEL" --data "$WORK/long.jsonl" --max-len 2048 --micro-batch-size 2
        --grad-accum 1 --max-steps 2 --epochs 1 --device cpu
        --activation-checkpointing "$1" --loss-chunk "$2")
  est=$("$TRAIN" "${args[@]}" --out "$WORK/out" --estimate 2>/dev/null \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["peak"])')
  rm -rf "$WORK/out"
  /usr/bin/time -o "$WORK/time" -f "%M" "$TRAIN" "${args[@]}" --out "$WORK/out" >/dev/null 2>&1
  kb=$(tail -1 "$WORK/time")
  rm -rf "$WORK/out"
  python3 -c "import json; e=$est; m=$kb*1024; print(json.dumps({'activation_checkpointing': '$1' == 'true', 'loss_chunk': $2, 'estimate_bytes': e, 'peak_rss_bytes': m, 'estimate_over_measured': round(e/m, 3)}))"
done
