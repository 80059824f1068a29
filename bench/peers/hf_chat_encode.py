#!/usr/bin/env python3
"""transformers' chat rendering + tokenization on the conversations `mask_throughput.rs` encodes:
the model's own Jinja chat template (`apply_chat_template(..., tokenize=False)`) and then the fast
tokenizer on the rendered text, one conversation at a time, one thread. Roles as ShareGPT's
aliases, leading assistant turns dropped, conversations whose roles do not alternate skipped, as
in sft-chat. The peer does less work than sft-chat (no assistant mask, no span checks), so a
ratio in our favour is conservative.

    python hf_chat_encode.py SHAREGPT.json MODEL.gguf
"""
import json
import os
import pathlib
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from transformers import AutoTokenizer  # noqa: E402

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bing": "assistant",
         "bard": "assistant", "assistant": "assistant", "model": "assistant", "system": "system"}


def main():
    data, gguf = sys.argv[1], pathlib.Path(sys.argv[2])
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    convs = []
    for rec in json.loads(pathlib.Path(data).read_text()):
        msgs = [{"role": ROLES[m["from"].lower()], "content": m["value"]} for m in rec["conversations"]]
        while msgs and msgs[0]["role"] == "assistant":
            msgs.pop(0)
        convs.append(msgs)
    t = time.perf_counter()
    encoded = skipped = tokens = 0
    for msgs in convs:
        roles = [m["role"] for m in msgs if m["role"] != "system"]
        if not roles or any(r != ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(roles)):
            skipped += 1
            continue
        text = tok.apply_chat_template(msgs, tokenize=False)
        tokens += len(tok(text, add_special_tokens=False)["input_ids"])
        encoded += 1
    secs = time.perf_counter() - t
    print(json.dumps({"impl": "transformers apply_chat_template + tokenizer", "conversations": len(convs),
                      "encoded": encoded, "skipped": skipped, "tokens": tokens, "seconds": secs,
                      "tokens_per_s": tokens / secs}))


if __name__ == "__main__":
    main()
