//! Print what this process sees: libtorch version and location, CUDA, GPUs, bf16, threads.
//!
//! `cargo run --example env -- [--device auto|cpu|cuda[:N]] [--json]`

use clap::Parser;
use sft_examples::{DeviceSpec, EnvReport};

#[derive(Parser)]
struct Args {
    /// Device to resolve, to check that it is usable.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let report = EnvReport::probe();
    let device = args.device.resolve()?;
    if args.json {
        let mut v = serde_json::to_value(&report)?;
        v["resolved_device"] = serde_json::json!(format!("{device:?}"));
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{report}");
        println!("resolved device  : {device:?}");
    }
    Ok(())
}
