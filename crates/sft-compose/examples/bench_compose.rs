//! Benchmark: the paper's composition grid on the shared data, and JSONL parse throughput.
//!
//! ```text
//! cargo run --release -p sft-compose --example bench_compose -- --data ../shared/data --json bench.json
//! ```
//!
//! Grid: ratios {1, 1/4, 1/16, 1/64, 1/256} × {math, code, general alone; all three mixed}
//! plus the three RQ3 set-ups at the same five values (35 mixtures). Each mixture is composed,
//! written as JSONL and given a manifest. Sources are loaded once (a shared `Catalog`), as a
//! sweep would. Peak memory is the process's VmHWM. Throughput: a generated chat-format JSONL
//! file of at least `--parse-mb` MB in a temporary directory, loaded strictly.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use sft_compose::{
    compose_with, load_source, Catalog, LoadOptions, MixtureSpec, Ratio, SourceSpec,
};

#[derive(Parser)]
struct Args {
    /// The shared data directory.
    #[arg(long, env = "SFT_DATA_DIR", default_value = "../shared/data")]
    data: PathBuf,
    /// Write the JSON report here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Size of the generated JSONL file for the throughput test.
    #[arg(long, default_value_t = 128)]
    parse_mb: u64,
    /// Repetitions of the grid (the minimum and median are reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of this process so far (from /proc/self/stat, 100 Hz ticks).
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn grid(data: &std::path::Path) -> Result<Vec<(String, MixtureSpec)>> {
    let math = SourceSpec::new("math", data.join("gsm8k/train.jsonl"));
    let code = SourceSpec::new("code", data.join("code_alpaca/code_alpaca_20k.json"));
    let general = SourceSpec::new(
        "general",
        data.join("sharegpt/sharegpt_v3_sample_1011.json"),
    );
    let mut out = Vec::new();
    for den in [1u64, 4, 16, 64, 256] {
        let r = Ratio::new(1, den)?;
        for s in [&math, &code, &general] {
            out.push((
                format!("rq1/{}/1-{den}", s.name),
                MixtureSpec::new(42, vec![s.clone().with_ratio(r)]),
            ));
        }
        let all = vec![
            math.clone().with_ratio(r),
            code.clone().with_ratio(r),
            general.clone().with_ratio(r),
        ];
        out.push((format!("rq2/mixed/1-{den}"), MixtureSpec::new(42, all)));
        let spec = vec![math.clone(), code.clone()];
        out.push((
            format!("rq3/full-general/k=1-{den}"),
            MixtureSpec::full_general_specialized_at_k(42, general.clone(), spec.clone(), r)?,
        ));
        out.push((
            format!("rq3/full-specialized/general=1-{den}"),
            MixtureSpec::full_specialized_general_at_k(
                42,
                general.clone(),
                spec.clone(),
                Ratio::new(den, 1)?,
            )?,
        ));
        out.push((
            format!("rq3/general-1-64/specialized=1-{den}"),
            MixtureSpec::general_at_with_k(
                42,
                general.clone(),
                Ratio::new(1, 64)?,
                spec,
                Ratio::new(64, den)?,
            )?,
        ));
    }
    Ok(out)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let specs = grid(&args.data)?;
    let tmp = tempfile::tempdir()?;

    let mut runs = Vec::new();
    let mut records_written = 0usize;
    let mut bytes_written = 0u64;
    for _ in 0..args.repeat.max(1) {
        let t0 = Instant::now();
        let c0 = cpu_s();
        let mut catalog = Catalog::new();
        let mut load_s = 0.0;
        let mut compose_s = 0.0;
        let mut write_s = 0.0;
        records_written = 0;
        bytes_written = 0;
        for (i, (name, spec)) in specs.iter().enumerate() {
            let t = Instant::now();
            for s in &spec.sources {
                catalog.prepare(s, false, false)?;
            }
            load_s += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let m = compose_with(spec, &mut catalog).with_context(|| name.clone())?;
            compose_s += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let out = tmp.path().join(format!("{i}.jsonl"));
            m.write(&out)?;
            m.manifest()
                .write(&tmp.path().join(format!("{i}.manifest.json")))?;
            write_s += t.elapsed().as_secs_f64();
            records_written += m.len();
            bytes_written += std::fs::metadata(&out)?.len();
        }
        runs.push((
            t0.elapsed().as_secs_f64(),
            load_s,
            compose_s,
            write_s,
            cpu_s() - c0,
        ));
    }
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let best = runs[0];
    let median = runs[runs.len() / 2];
    let grid_peak = peak_rss_kib();

    // Throughput: generate a chat-format JSONL file from the real records.
    let mut catalog = Catalog::new();
    let sources = [
        "gsm8k/train.jsonl",
        "code_alpaca/code_alpaca_20k.json",
        "sharegpt/sharegpt_v3_sample_1011.json",
    ]
    .iter()
    .map(|p| catalog.prepare(&SourceSpec::new("src", args.data.join(p)), false, false))
    .collect::<sft_compose::Result<Vec<_>>>()?;
    let big = tmp.path().join("big.jsonl");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&big)?);
        let target = args.parse_mb * 1_000_000;
        let mut written = 0u64;
        let mut copy = 0usize;
        'outer: loop {
            for s in &sources {
                for r in &s.loaded.records {
                    let mut r = r.clone();
                    r.id = format!("{}#{copy}", r.id);
                    let line = serde_json::to_vec(&r)?;
                    w.write_all(&line)?;
                    w.write_all(b"\n")?;
                    written += line.len() as u64 + 1;
                    if written >= target {
                        break 'outer;
                    }
                }
            }
            copy += 1;
        }
        w.flush()?;
    }
    let size = std::fs::metadata(&big)?.len();
    let mut parse_runs = Vec::new();
    let mut parsed_records = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let c = cpu_s();
        let s = load_source("big", &big, &LoadOptions::strict())?;
        parse_runs.push((t.elapsed().as_secs_f64(), cpu_s() - c));
        parsed_records = s.records.len();
    }
    parse_runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mb_s = size as f64 / 1e6 / parse_runs[0].0;
    let mb_cpu_s = size as f64 / 1e6 / parse_runs[0].1.max(0.01);

    let report = serde_json::json!({
        "grid": {
            "mixtures": specs.len(),
            "records_written": records_written,
            "bytes_written": bytes_written,
            "repeats": runs.len(),
            "best_wall_s": best.0,
            "best_load_s": best.1,
            "best_compose_s": best.2,
            "best_write_s": best.3,
            "best_run_cpu_s": best.4,
            "median_wall_s": median.0,
            "peak_rss_mib": grid_peak.map(|k| k as f64 / 1024.0),
        },
        "parse": {
            "file_bytes": size,
            "records": parsed_records,
            "best_s": parse_runs[0].0,
            "best_cpu_s": parse_runs[0].1,
            "mb_per_s": mb_s,
            "mb_per_cpu_s": mb_cpu_s,
        },
        "peak_rss_mib_after_parse": peak_rss_kib().map(|k| k as f64 / 1024.0),
        "cores_available": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "loadavg_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, text + "\n")?;
    }
    Ok(())
}
