"""The peer of `gpu_check`'s timed training step: the same model shape (an HF config.json,
random weights), sequence, micro-batch 1, bf16 on CUDA (f32 on the CPU), gradient
checkpointing, fused AdamW, in PyTorch with transformers' LlamaForCausalLM. Prints one JSON
object: median step time, tokens/s. Without transformers it says so (ok: false).
"""
import argparse
import json
import statistics
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--config", required=True)
ap.add_argument("--seq", type=int, default=2048)
ap.add_argument("--steps", type=int, default=4)
ap.add_argument("--device", default="cuda")
a = ap.parse_args()

import torch

try:
    import transformers
except ImportError as e:
    print(json.dumps({"ok": False, "error": f"transformers not installed: {e}"}))
    sys.exit(0)

cfg = transformers.AutoConfig.from_pretrained(a.config)
cuda = a.device == "cuda"
dtype = torch.bfloat16 if cuda else torch.float32
torch.manual_seed(0)
model = transformers.LlamaForCausalLM(cfg).to(a.device, dtype)
model.gradient_checkpointing_enable()
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=cuda)
ids = torch.randint(0, cfg.vocab_size, (1, a.seq), device=a.device)
times = []
for step in range(a.steps + 1):
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=False)
    if cuda:
        torch.cuda.synchronize()
    if step > 0:
        times.append(time.perf_counter() - t0)
med = statistics.median(times)
print(json.dumps({
    "ok": True,
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "step_s_median": med,
    "tokens_per_s": a.seq / med,
    "peak_cuda_bytes": torch.cuda.max_memory_allocated() if cuda else None,
}))
