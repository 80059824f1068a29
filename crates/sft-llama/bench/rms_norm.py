#!/usr/bin/env python3
"""libtorch's fused `rms_norm` against transformers' RMSNorm ops (what `sft_llama` decodes with).

    python rms_norm.py [threads]

f32, hidden size 576 (SmolLM2), eps 1e-5; one JSON line per row count with microseconds per
call for both and the largest absolute difference of their outputs.
"""
import json
import sys
import time

import torch


def timed(f, n=2000):
    for _ in range(20):
        f()
    t = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t) / n * 1e6


def main():
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads())
    torch.manual_seed(0)
    w = torch.randn(576)
    for rows in [1, 16, 64, 1600]:
        x = torch.randn(rows, 1, 576)

        def hf():
            v = x.float().pow(2).mean(-1, keepdim=True)
            return w * (x * torch.rsqrt(v + 1e-5)).to(x.dtype)

        def fused():
            return torch.rms_norm(x, (576,), w, 1e-5)

        print(json.dumps({"rows": rows, "transformers_us": round(timed(hf), 1),
                          "rms_norm_us": round(timed(fused), 1),
                          "max_abs_diff": (hf() - fused()).abs().max().item()}), flush=True)


if __name__ == "__main__":
    main()
