//! Every built-in plan's stages and mixtures against the paper's definitions (arXiv 2310.05492,
//! RQ4 and §4.3), counted on the real source files in `SFT_DATA_DIR` (or `../shared/data`).

use std::path::PathBuf;

use sft_schedule::{Ratio, Strategy, CODE, DMT_K_GRID, GENERAL, MATH};

fn data_dir() -> PathBuf {
    sft_testkit::shared_data()
}

/// Record counts of the three real sources: (code, math, general).
fn source_sizes(dir: &std::path::Path) -> (usize, usize, usize) {
    let json_len = |p: PathBuf| -> usize {
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        v.as_array()
            .unwrap_or_else(|| panic!("{} is not a JSON array", p.display()))
            .len()
    };
    let math_path = dir.join("gsm8k/train.jsonl");
    let math = std::fs::read_to_string(&math_path)
        .unwrap_or_else(|e| panic!("{}: {e}", math_path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    (
        json_len(dir.join("code_alpaca/code_alpaca_20k.json")),
        math,
        json_len(dir.join("sharegpt/sharegpt_v3_sample_1011.json")),
    )
}

#[test]
fn dmt_stage_two_holds_all_general_and_floor_k_n_of_each_specialized_source() {
    let dir = data_dir();
    let (code, math, general) = source_sizes(&dir);
    assert_eq!(
        (code, math, general),
        (20_022, 7_473, 1_011),
        "the README's record counts"
    );
    for (num, den) in DMT_K_GRID {
        let k = Ratio::new(num, den).unwrap();
        let plan = Strategy::dmt(k).unwrap().plan();
        let [s1, s2] = &plan.stages[..] else {
            panic!("DMT has two stages")
        };
        // Stage 1 = the whole specialized data, no general data.
        assert_eq!(
            (
                s1.count_of(CODE, code),
                s1.count_of(MATH, math),
                s1.count_of(GENERAL, general)
            ),
            (code, math, 0)
        );
        // Stage 2 = all general data + floor(k·n) of code and of math.
        let expect = |n: usize| ((n as u64 * num) / den) as usize;
        assert_eq!(s2.count_of(GENERAL, general), general, "k={k}");
        assert_eq!(s2.count_of(CODE, code), expect(code), "k={k}");
        assert_eq!(s2.count_of(MATH, math), expect(math), "k={k}");
    }
    // The paper's k = 1/4 example spelled out.
    let plan = Strategy::parse("dmt:1/4").unwrap().plan();
    assert_eq!(plan.stages[1].count_of(CODE, code), 5_005);
    assert_eq!(plan.stages[1].count_of(MATH, math), 1_868);
}

#[test]
fn every_builtin_strategy_uses_each_record_as_the_paper_says() {
    let dir = data_dir();
    let (code, math, general) = source_sizes(&dir);
    let counts = |s: &str| -> Vec<(usize, usize, usize)> {
        Strategy::parse(s)
            .unwrap()
            .plan()
            .stages
            .iter()
            .map(|st| {
                (
                    st.count_of(CODE, code),
                    st.count_of(MATH, math),
                    st.count_of(GENERAL, general),
                )
            })
            .collect()
    };
    assert_eq!(counts("individual:code"), vec![(code, 0, 0)]);
    assert_eq!(counts("individual:math"), vec![(0, math, 0)]);
    assert_eq!(counts("individual:general"), vec![(0, 0, general)]);
    assert_eq!(counts("multi-task"), vec![(code, math, general)]);
    assert_eq!(
        counts("sequential"),
        vec![(code, 0, 0), (0, math, 0), (0, 0, general)]
    );
    assert_eq!(
        counts("mixed-sequential"),
        vec![(code, math, 0), (0, 0, general)]
    );
    assert_eq!(counts("dmt:0"), counts("mixed-sequential"));
    assert_eq!(
        counts("dmt:1/256"),
        vec![(code, math, 0), (code / 256, math / 256, general)]
    );
    assert_eq!(
        counts("dmt:1"),
        vec![(code, math, 0), (code, math, general)]
    );
}
