#!/usr/bin/env python3
"""The bench_compose grid with Hugging Face `datasets`, for comparison.

Same 35 selections as examples/bench_compose.rs: ratios {1, 1/4, 1/16, 1/64, 1/256} x
{math, code, general alone; all mixed} + the three RQ3 set-ups. Each source is loaded once
(`load_dataset("json")`, cache in a temp dir), each selection is `shuffle(seed).select(range(n))`,
mixtures are `concatenate_datasets(...).shuffle(seed)`, and each result is written as JSONL with
`to_json`. `interleave_datasets` is timed separately on the RQ2 mixtures (probabilities
proportional to the selected sizes, stopping_strategy="all_exhausted").

Note: ShareGPT is loaded as-is (1,011 rows) while sft-compose drops 9 assistant-only
conversations (1,002), so counts differ by at most a few records on the general source.

    python crates/sft-compose/benches/grid_datasets.py --data ../shared/data --json py.json
"""
import argparse, json, os, resource, statistics, tempfile, time

p = argparse.ArgumentParser()
p.add_argument("--data", default=os.environ.get("SFT_DATA_DIR", "../shared/data"))
p.add_argument("--json")
p.add_argument("--repeat", type=int, default=3)
args = p.parse_args()

tmp = tempfile.mkdtemp(prefix="grid_datasets_")
os.environ["HF_DATASETS_CACHE"] = os.path.join(tmp, "cache")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
import datasets  # noqa: E402
from datasets import concatenate_datasets, interleave_datasets, load_dataset  # noqa: E402

datasets.disable_progress_bars()
FILES = {
    "math": "gsm8k/train.jsonl",
    "code": "code_alpaca/code_alpaca_20k.json",
    "general": "sharegpt/sharegpt_v3_sample_1011.json",
}
DENS = [1, 4, 16, 64, 256]


def take(ds, frac, seed):
    n = max(1, int(len(ds) * frac)) if frac > 0 else 0
    if n <= len(ds):
        return ds.shuffle(seed=seed).select(range(n))
    whole, rest = divmod(n, len(ds))
    sh = ds.shuffle(seed=seed)
    return concatenate_datasets([sh] * whole + [sh.select(range(rest))])


def grid_specs():
    out = []
    for den in DENS:
        r = 1 / den
        for s in ("math", "code", "general"):
            out.append((f"rq1/{s}/1-{den}", {s: r}))
        out.append((f"rq2/mixed/1-{den}", {"math": r, "code": r, "general": r}))
        out.append((f"rq3/full-general/k=1-{den}", {"math": r, "code": r, "general": 1}))
        out.append((f"rq3/full-specialized/general=1-{den}", {"math": 1, "code": 1, "general": r}))
        out.append((f"rq3/general-1-64/specialized=1-{den}", {"math": r, "code": r, "general": 1 / 64}))
    return out


runs = []
interleave_s = []
for rep in range(args.repeat):
    t0 = time.perf_counter()
    c0 = time.process_time()
    # a fresh cache each repeat, as sft-compose gets a fresh Catalog
    os.environ["HF_DATASETS_CACHE"] = os.path.join(tmp, f"cache{rep}")
    srcs = {k: load_dataset("json", data_files=os.path.join(args.data, v), split="train", cache_dir=os.environ["HF_DATASETS_CACHE"]) for k, v in FILES.items()}
    load_s = time.perf_counter() - t0
    written = 0
    t1 = time.perf_counter()
    select_s = 0.0
    for i, (name, fr) in enumerate(grid_specs()):
        ts = time.perf_counter()
        parts = [take(srcs[k], f, 42) for k, f in fr.items()]
        mix = parts[0] if len(parts) == 1 else concatenate_datasets(parts).shuffle(seed=42)
        select_s += time.perf_counter() - ts
        mix.to_json(os.path.join(tmp, f"{rep}_{i}.jsonl"))
        written += len(mix)
    grid_s = time.perf_counter() - t1
    ti = time.perf_counter()
    for den in DENS:
        parts = [take(srcs[k], 1 / den, 42) for k in ("math", "code", "general")]
        total = sum(len(x) for x in parts)
        inter = interleave_datasets(parts, probabilities=[len(x) / total for x in parts], seed=42, stopping_strategy="all_exhausted")
        _ = len(inter)
    interleave_s.append(time.perf_counter() - ti)
    runs.append({"wall_s": time.perf_counter() - t0 - interleave_s[-1], "run_cpu_s_incl_interleave": time.process_time() - c0, "load_s": load_s, "select_s": select_s, "select_and_write_s": grid_s, "records_written": written})

runs.sort(key=lambda r: r["wall_s"])
report = {
    "datasets_version": datasets.__version__,
    "mixtures": len(grid_specs()),
    "repeats": len(runs),
    "best": runs[0],
    "median_wall_s": statistics.median(r["wall_s"] for r in runs),
    "interleave_rq2_best_s": min(interleave_s),
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}
text = json.dumps(report, indent=2)
print(text)
if args.json:
    with open(args.json, "w") as f:
        f.write(text + "\n")
import shutil; shutil.rmtree(tmp, ignore_errors=True)
