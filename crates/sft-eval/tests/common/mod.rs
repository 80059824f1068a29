//! Shared test helpers: locating the real benchmark data.

#![allow(dead_code)]

use std::path::PathBuf;

/// `$SFT_DATA_DIR`, else `<workspace>/../shared/data`. Missing data fails the test unless
/// `SFT_SKIP_SHARED_DATA=1`, in which case this prints a loud SKIPPED line and returns `None`.
pub fn shared_data() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("SFT_DATA_DIR").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")),
    ];
    for c in candidates.into_iter().flatten() {
        if c.is_dir() {
            return Some(c);
        }
    }
    if std::env::var("SFT_SKIP_SHARED_DATA").as_deref() == Ok("1") {
        eprintln!("==================== SKIPPED (no shared data) ====================");
        return None;
    }
    panic!(
        "shared data not found: set SFT_DATA_DIR to the data folder (with humaneval/, gsm8k/, mt_bench/) \
         or SFT_SKIP_SHARED_DATA=1 to skip"
    );
}

/// The checked-in fixtures folder.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/eval")
}
