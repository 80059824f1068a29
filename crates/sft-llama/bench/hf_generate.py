#!/usr/bin/env python3
"""transformers' `generate` on the same prompts and settings as `bench_generate.rs`.

    python hf_generate.py MODEL.gguf PROMPTS.json [device] [dtype] [max_new] [batch sizes...]

Greedy, `min_new_tokens = max_new_tokens`, left padding for batches, intra-op threads equal to
libtorch's default (`torch.get_num_threads()`, the same rule tch uses) or BENCH_THREADS. One JSON line per batch size.
"""
import json
import os
import pathlib
import sys
import time

import torch
import transformers
from transformers import AutoModelForCausalLM


def main():
    if os.environ.get("BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    a = sys.argv[1:]
    model_path = pathlib.Path(a[0])
    doc = json.loads(pathlib.Path(a[1]).read_text())
    device = a[2] if len(a) > 2 else "cpu"
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[a[3] if len(a) > 3 else "f32"]
    max_new = int(a[4]) if len(a) > 4 else 64
    batches = [int(x) for x in a[5:]] or [1, 16]
    base = [c["prompt_ids"] for c in doc["cases"]]
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_path.parent, gguf_file=model_path.name, dtype=dtype).to(device).eval()
    load_secs = time.perf_counter() - t
    pad = 0

    def run(prompts):
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        with torch.no_grad():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new, min_new_tokens=max_new,
                                 do_sample=False, pad_token_id=pad)
        return out.shape[1] - width

    run(base[:1])  # warm-up
    for bs in batches:
        n = max(bs, 4)
        prompts = [base[i % len(base)] for i in range(n)]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        generated = 0
        for i in range(0, n, bs):
            chunk = prompts[i:i + bs]
            generated += run(chunk) * len(chunk)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        secs = time.perf_counter() - t
        print(json.dumps({
            "impl": f"transformers {transformers.__version__} (torch {torch.__version__})", "device": device,
            "dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads(), "batch_size": bs, "prompts": n,
            "max_new_tokens": max_new, "load_secs": load_secs,
            "stats": {"generated_tokens": generated, "total_secs": secs, "tokens_per_sec": generated / secs},
        }), flush=True)


if __name__ == "__main__":
    main()
