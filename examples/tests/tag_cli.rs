//! The `tag` example with the embedded SmolLM2 on real ShareGPT records: every record gets a
//! line (tagged or failed, never dropped), the statistics add up, and compose reads the file.

use std::process::Command;

const HINT: &str = " (the tag example links libtorch: run `cargo xtask setup` and `source` what `cargo xtask env` prints)";

#[test]
fn tagging_ten_sharegpt_records_with_smollm2() {
    let bin = sft_testkit::example_binary("sft-examples", "tag", HINT);
    let source = sft_testkit::shared_data().join("sharegpt/sharegpt_v3_sample_1011.json");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("general.tags.jsonl");
    let run = Command::new(&bin)
        .arg("--source")
        .arg(format!("general={}", source.display()))
        .args([
            "--limit",
            "10",
            "--max-query-chars",
            "400",
            "--max-new-tokens",
            "64",
        ])
        .args([
            "--parse-retries",
            "1",
            "--device",
            "cpu",
            "--batch-size",
            "10",
        ])
        .arg("--model")
        .arg(sft_testkit::smollm2_gguf())
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run tag");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "tag failed: {stderr}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .expect("tag file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 10);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["id"], format!("general:{i}"));
        let status = l["status"].as_str().expect("status");
        assert!(status == "ok" || status == "failed", "{l}");
        if status == "ok" {
            let tags = l["tags"].as_array().expect("tags");
            assert!(tags
                .iter()
                .all(|t| t["tag"].is_string() && t["raw"].is_string()));
        } else {
            assert!(l["error"].is_string(), "a failure says why: {l}");
        }
    }
    let stats: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("general.tags.stats.json")).expect("stats"),
    )
    .expect("stats json");
    assert_eq!(stats["records"], 10);
    let n = |k: &str| stats[k].as_u64().expect(k);
    assert_eq!(
        n("tagged") + n("parse_failures") + n("request_failures") + n("no_query"),
        10
    );
    assert_eq!(n("request_failures"), 0);
    assert!(n("completions") >= 10);
    let ok = lines.iter().filter(|l| l["status"] == "ok").count() as u64;
    assert_eq!(ok, n("tagged"));
    let file = sft_compose::load_tag_file(&out).expect("compose reads the tag file");
    assert_eq!(file.tags.len(), 10);
}
