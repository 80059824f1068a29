#!/usr/bin/env python3
"""llama.cpp's CPU generation (through llama-cpp-python's low-level API) on the same prompts and
settings as `crates/sft-llama/examples/bench_generate.rs`: the same GGUF file as stored (no
dequantization), the same token-id prompts, greedy, exactly `max_new` tokens per prompt (no EOS
stopping), batch 1 runs max(bs, 4) prompts one after another, a batch of bs runs bs sequences in
one llama.cpp batch (one sequence id each, prompts prefilled together, then one token per
sequence per decode call). Threads: BENCH_THREADS, else the machine's CPU count (what libtorch
uses by default). One JSON line per batch size, shaped like bench_generate's.

    python llama_cpp_generate.py MODEL.gguf PROMPTS.json [max_new] [batch sizes...]
"""
import ctypes
import json
import os
import pathlib
import sys
import time

import llama_cpp as L
import numpy as np


def pick(*names):
    for n in names:
        f = getattr(L, n, None)
        if f is not None:
            return f
    raise AttributeError(f"llama_cpp has none of {names}")


def main():
    a = sys.argv[1:]
    model_path = a[0]
    doc = json.loads(pathlib.Path(a[1]).read_text())
    max_new = int(a[2]) if len(a) > 2 else 64
    batches = [int(x) for x in a[3:]] or [1, 16]
    threads = int(os.environ.get("BENCH_THREADS") or os.cpu_count())
    base = [c["prompt_ids"] for c in doc["cases"]]
    longest = max(len(p) for p in base)

    L.llama_backend_init()
    if hasattr(L, "llama_log_set"):
        # Silence llama.cpp's loading chatter (the JSON lines are the output).
        cb = L.llama_log_callback(lambda level, text, user: None)
        L.llama_log_set(cb, ctypes.c_void_p(0))
        main.log_cb = cb
    t = time.perf_counter()
    mparams = L.llama_model_default_params()
    model = pick("llama_model_load_from_file", "llama_load_model_from_file")(model_path.encode(), mparams)
    if not model:
        raise SystemExit(f"llama.cpp could not load {model_path}")
    if hasattr(L, "llama_model_get_vocab"):
        n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    else:
        n_vocab = L.llama_n_vocab(model)
    load_secs = time.perf_counter() - t
    contexts = {}

    def context(bs):
        if bs not in contexts:
            cp = L.llama_context_default_params()
            cp.n_ctx = bs * (longest + max_new + 8)
            cp.n_batch = max(bs * longest, bs, 512)
            cp.n_ubatch = cp.n_batch
            cp.n_seq_max = bs
            cp.n_threads = threads
            cp.n_threads_batch = threads
            if hasattr(cp, "kv_unified"):
                cp.kv_unified = True
            ctx = pick("llama_init_from_model", "llama_new_context_with_model")(model, cp)
            if not ctx:
                raise SystemExit(f"llama.cpp could not make a context for batch {bs}")
            contexts[bs] = ctx
        return contexts[bs]

    def clear(ctx):
        if hasattr(L, "llama_get_memory"):
            L.llama_memory_clear(L.llama_get_memory(ctx), True)
        else:
            pick("llama_kv_self_clear", "llama_kv_cache_clear")(ctx)

    def run(prompts):
        """Generates max_new tokens for each prompt (one sequence each); returns the count."""
        bs = len(prompts)
        ctx = context(bs)
        clear(ctx)
        total = sum(len(p) for p in prompts)
        batch = L.llama_batch_init(max(total, bs), 0, bs)
        try:
            def submit(items):
                # items: (token, pos, seq, want_logits)
                for i, (tok, pos, seq, want) in enumerate(items):
                    batch.token[i] = tok
                    batch.pos[i] = pos
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = seq
                    batch.logits[i] = want
                batch.n_tokens = len(items)
                rc = L.llama_decode(ctx, batch)
                if rc != 0:
                    raise SystemExit(f"llama_decode returned {rc}")

            items, last = [], []
            for s, p in enumerate(prompts):
                for j, tok in enumerate(p):
                    items.append((tok, j, s, j == len(p) - 1))
                last.append(len(items) - 1)
            submit(items)
            pos = [len(p) for p in prompts]
            generated = 0
            for step in range(max_new):
                nxt = []
                for s in range(bs):
                    row = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, last[s]), shape=(n_vocab,))
                    nxt.append(int(row.argmax()))
                generated += bs
                if step == max_new - 1:
                    break  # the last token needs no forward pass
                submit([(nxt[s], pos[s], s, True) for s in range(bs)])
                last = list(range(bs))
                pos = [q + 1 for q in pos]
            return generated
        finally:
            L.llama_batch_free(batch)

    run(base[:1])  # warm-up
    for bs in batches:
        n = max(bs, 4)
        prompts = [base[i % len(base)] for i in range(n)]
        t = time.perf_counter()
        generated = 0
        for i in range(0, n, bs):
            generated += run(prompts[i:i + bs])
        secs = time.perf_counter() - t
        print(json.dumps({
            "impl": f"llama.cpp (llama-cpp-python {L.__version__})", "device": "cpu", "dtype": "as stored",
            "threads": threads, "batch_size": bs, "prompts": n, "max_new_tokens": max_new, "load_secs": load_secs,
            "stats": {"generated_tokens": generated, "total_secs": secs, "tokens_per_sec": generated / secs},
        }), flush=True)


if __name__ == "__main__":
    main()
