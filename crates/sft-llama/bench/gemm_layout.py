#!/usr/bin/env python3
"""Why inference loads keep CPU matrices column-major (`sft_llama::WeightLayout`).

    python gemm_layout.py [threads]

Times `x · Wᵀ` for SmolLM2-135M's matrix shapes at the row counts decoding sends (batch size ×
1 token) and prefill sends, with `W` as HF stores it (`[out, in]` contiguous, what
`F.linear` gets: MKL's transposed-operand kernels) against `W` as a transposed view of `[in, out]`
storage (the same values; MKL reads the storage as it lies). Several distinct matrices per shape,
so the weights come from memory as in a real step, not from cache. One JSON line per shape and
row count with milliseconds for both and their ratio (above 1: column-major faster).
"""
import json
import sys
import time

import torch


def timed(f, reps):
    f()
    t = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - t) / reps * 1e3


def main():
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads())
    torch.manual_seed(0)
    # (out, in, copies): q/k/v stacked, o, gate/up stacked, down, the tied LM head.
    shapes = [(960, 576, 8), (576, 576, 8), (3072, 576, 8), (576, 1536, 8), (49152, 576, 1)]
    with torch.no_grad():
        for out_f, in_f, copies in shapes:
            rows = [torch.randn(out_f, in_f) * 0.02 for _ in range(copies)]
            cols = [w.t().contiguous().t() for w in rows]
            for m in [1, 2, 4, 8, 16, 32, 48, 64, 256, 1600]:
                x = torch.randn(m, in_f)
                reps = 3 if m >= 256 else 10
                a = timed(lambda: [torch.nn.functional.linear(x, w) for w in rows], reps)
                b = timed(lambda: [torch.nn.functional.linear(x, w) for w in cols], reps)
                print(json.dumps({"out": out_f, "in": in_f, "copies": copies, "rows": m,
                                  "row_major_ms": round(a, 3), "column_major_ms": round(b, 3),
                                  "speedup": round(a / b, 2)}), flush=True)


if __name__ == "__main__":
    main()
