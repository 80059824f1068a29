"""Python side of the CPU training-step benchmark (see docs/benchmarks/train.md).

Same model (the GGUF, dequantised to f32 by transformers), same batch (ids from the formula
below, labels = ids with the first quarter of each row masked), same step: forward, token-mean
cross entropy, backward, clip_grad_norm_(1.0), torch.optim.AdamW(foreach=False).

Usage: python train_step.py MODEL BATCH SEQ STEPS [DEVICE] [DTYPE]
MODEL: .gguf (real weights) or config.json (random init). DEVICE cpu|cuda; DTYPE f32|bf16
(bf16 = autocast to bfloat16 with f32 weights, the usual PyTorch recipe).
"""
import json
import os
import sys
import time

import torch
from transformers import LlamaForCausalLM

gguf, B, T, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dev = sys.argv[5] if len(sys.argv) > 5 else "cpu"
bf16 = len(sys.argv) > 6 and sys.argv[6] == "bf16"
torch.manual_seed(0)
if gguf.endswith(".json"):
    from transformers import LlamaConfig
    model = LlamaForCausalLM(LlamaConfig.from_json_file(gguf))
else:
    model = LlamaForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf), torch_dtype=torch.float32)
model = model.to(dev)
model.train()
V = model.config.vocab_size
ids = torch.tensor([[(r * 7919 + c * 104729 + 13) % V for c in range(T)] for r in range(B)], dtype=torch.long, device=dev)
labels = ids.clone()
labels[:, : T // 4] = -100
opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0, foreach=False)
times, losses = [], []
for s in range(steps + 1):
    t0 = time.perf_counter()
    with torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=ids).logits.float()
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
    ) / (labels[:, 1:] != -100).sum()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if dev == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    if s > 0:  # the first step warms up allocators
        times.append(dt)
    losses.append(loss.item())
tok = B * T
print(json.dumps({
    "impl": "python-transformers", "torch": torch.__version__, "threads": torch.get_num_threads(),
    "batch": B, "seq": T, "steps": steps, "step_s": times, "median_step_s": sorted(times)[len(times) // 2],
    "tokens_per_s": tok / (sorted(times)[len(times) // 2]), "losses": losses,
}))
