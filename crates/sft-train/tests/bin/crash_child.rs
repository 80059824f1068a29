//! The child half of `tests/training.rs::kill_during_save_then_resume`: trains the tiny LLaMA on
//! the toy data ([`common::crash_run`]) into the directory given as the only argument. The
//! parent arms `SFT_TRAIN_CRASH_AT=K`, so the process aborts at the K-th file event.
//!
//! Built only with the `crash-injection` feature (`required-features`), which sft-train's tests
//! enable; a build without the hook would train to the end, and the parent fails on that.

#[path = "../common/mod.rs"]
mod common;

use std::path::PathBuf;

fn main() {
    assert!(
        sft_train::checkpoint::CRASH_INJECTION,
        "sft-train-crash-child needs the crash-injection feature"
    );
    let out: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .expect("usage: sft-train-crash-child OUT_DIR");
    let (exs, cfg) = common::crash_run();
    match common::run_tiny(&exs, &cfg, &out, &sft_train::RunOptions::default()) {
        Ok(o) => println!("finished {} steps without crashing", o.steps),
        Err(e) => {
            eprintln!("training failed: {e}");
            std::process::exit(3);
        }
    }
}
