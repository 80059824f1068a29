//! `sft_compose::rft`: the RFT filter (issue #16) on hand-written fixtures, property tests over
//! generated candidates, and the `rft` example end to end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sft_compose::rft::{
    calc_spans, check_equation, eval_arith, extract_answer, filter_files, parse_python_float,
    passes_calc_check, path_key, read_questions, write_records, FilterOptions, FilterStats,
    Question, RftError, RftFilter, RftRecord,
};
use sft_compose::{load_source, LoadOptions, Role, SourceFormat};

fn workspace() -> PathBuf {
    sft_testkit::workspace_root()
}

fn fixture(name: &str) -> PathBuf {
    workspace().join("fixtures/rft").join(name)
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary directory")
}

/// label -> (query, response) of the hand-written candidates (the `label` field is ignored by the
/// filter, which reads `query` and `response` only).
fn fixture_labels() -> HashMap<(String, String), String> {
    let text = std::fs::read_to_string(fixture("candidates.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                (
                    v["query"].as_str().unwrap().to_string(),
                    v["response"].as_str().unwrap().to_string(),
                ),
                v["label"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The output as (question number, label) pairs; the gold answer is "gold".
fn labelled(records: &[RftRecord]) -> Vec<(usize, String)> {
    let questions = read_questions(&fixture("questions.jsonl")).unwrap();
    let labels = fixture_labels();
    records
        .iter()
        .map(|r| {
            let q = questions
                .iter()
                .position(|q| q.query == r.query)
                .expect("a known question")
                + 1;
            let label = if questions[q - 1].response == r.response {
                "gold".to_string()
            } else {
                labels
                    .get(&(r.query.clone(), r.response.clone()))
                    .cloned()
                    .unwrap_or_else(|| panic!("output path not among the candidates: {r:?}"))
            };
            (q, label)
        })
        .collect()
}

fn pairs(items: &[(usize, &str)]) -> Vec<(usize, String)> {
    items.iter().map(|(q, l)| (*q, l.to_string())).collect()
}

/// The rule applied by hand to fixtures/rft (see fixtures/rft/PROVENANCE.md for what each
/// candidate exercises).
#[test]
fn fixture_keeps_exactly_what_the_rule_keeps() {
    let (records, stats) = filter_files(
        &fixture("questions.jsonl"),
        &fixture("candidates.jsonl"),
        FilterOptions::default(),
    )
    .unwrap();
    let expected = pairs(&[
        // Q1: c1 kept, then replaced in place by c6 (same equations with spaces, far from c5);
        // c5 (no spans: the empty key); c10, c12 (-2**2 = -4), c13 (2**-1 = 0.5) new keys.
        // Dropped: c2 wrong, c3 [invalid], c4 48/2=25, c7 and c14 duplicates of c6's key that are
        // closer to the rest, c8 span without '=', c9 '÷', c11 its `#### 72` after a NUL.
        (1, "gold"),
        (1, "c6"),
        (1, "c5"),
        (1, "c10"),
        (1, "c12"),
        (1, "c13"),
        // Q2 (gold `#### 1,000`): d1 and d3 kept; d5 (`#### 10,00` = 1000, d1's key) sums 23 to
        // d3 against d1's 24: not farther, dropped. d2's `=1,000` is not a float; d4 `1.000` and
        // d6 1000.5 are wrong; d7's query has a trailing space: unmatched.
        (2, "gold"),
        (2, "d1"),
        (2, "d3"),
        // Q3: e4 (`7 / 2 = 3.5`, e1's key) is 24 from e2 against e1's 18: it replaces e1 in
        // place; e2 (3.50001 is within 1e-3) and e6 (text after the second '=' ignored) are new.
        // e3 3.4 fails, e5 divides by zero, e7 `3.5.1` is no number.
        (3, "gold"),
        (3, "e4"),
        (3, "e2"),
        (3, "e6"),
        // Q4: only wrong and [invalid] candidates. Q5: no candidates.
        (4, "gold"),
        (5, "gold"),
    ]);
    assert_eq!(labelled(&records), expected);
    let expected_stats = FilterStats {
        dedup: true,
        questions: 5,
        duplicate_questions: 0,
        candidates: 30,
        unmatched_candidates: 1,
        invalid_answer: 4,
        wrong_answer: 4,
        correct: 21,
        calc_check_failed: 6,
        duplicate_paths: 3,
        replaced: 2,
        kept: 10,
        questions_without_correct: 2,
        paths_per_question: BTreeMap::from([(0, 2), (2, 1), (3, 1), (5, 1)]),
    };
    assert_eq!(stats, expected_stats);
    // The gold answer is written as {"query", "response"}, verbatim.
    assert_eq!(records[0].response.lines().last(), Some("#### 72"));
}

#[test]
fn no_dedup_keeps_every_correct_candidate_in_input_order() {
    let (records, stats) = filter_files(
        &fixture("questions.jsonl"),
        &fixture("candidates.jsonl"),
        FilterOptions { dedup: false },
    )
    .unwrap();
    let expected = pairs(&[
        (1, "gold"),
        (1, "c1"),
        (1, "c4"),
        (1, "c5"),
        (1, "c6"),
        (1, "c7"),
        (1, "c8"),
        (1, "c9"),
        (1, "c10"),
        (1, "c12"),
        (1, "c13"),
        (1, "c14"),
        (2, "gold"),
        (2, "d1"),
        (2, "d2"),
        (2, "d3"),
        (2, "d5"),
        (3, "gold"),
        (3, "e1"),
        (3, "e2"),
        (3, "e3"),
        (3, "e4"),
        (3, "e5"),
        (3, "e6"),
        (4, "gold"),
        (5, "gold"),
    ]);
    assert_eq!(labelled(&records), expected);
    assert_eq!(
        (stats.correct, stats.kept, stats.calc_check_failed),
        (21, 21, 6)
    );
    assert_eq!(
        stats.paths_per_question,
        BTreeMap::from([(0, 2), (4, 1), (6, 1), (11, 1)])
    );
}

/// RFT-format questions (`query`/`response`) give the same output as GSM8K ones.
#[test]
fn rft_format_questions_are_equivalent() {
    let dir = tempdir();
    let q = dir.path().join("q.jsonl");
    let rft: Vec<RftRecord> = read_questions(&fixture("questions.jsonl")).unwrap();
    write_records(&q, &rft).unwrap();
    let a = filter_files(
        &fixture("questions.jsonl"),
        &fixture("candidates.jsonl"),
        FilterOptions::default(),
    )
    .unwrap();
    let b = filter_files(&q, &fixture("candidates.jsonl"), FilterOptions::default()).unwrap();
    assert_eq!(a, b);
}

/// A candidate directory is every `*.jsonl` in sorted file-name order, whatever the creation order.
#[test]
fn candidate_directory_reads_jsonl_files_in_name_order() {
    let dir = tempdir();
    let shards = dir.path().join("cands");
    std::fs::create_dir(&shards).unwrap();
    let text = std::fs::read_to_string(fixture("candidates.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (a, b) = lines.split_at(13);
    std::fs::write(shards.join("shard_01.jsonl"), b.join("\n") + "\n\n").unwrap();
    std::fs::write(shards.join("shard_00.jsonl"), a.join("\n") + "\n").unwrap();
    std::fs::write(shards.join("notes.txt"), "not a candidate file\n").unwrap();
    let whole = filter_files(
        &fixture("questions.jsonl"),
        &fixture("candidates.jsonl"),
        FilterOptions::default(),
    )
    .unwrap();
    let split = filter_files(
        &fixture("questions.jsonl"),
        &shards,
        FilterOptions::default(),
    )
    .unwrap();
    assert_eq!(whole, split);

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = filter_files(
        &fixture("questions.jsonl"),
        &empty,
        FilterOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, RftError::NoCandidateFiles { .. }), "{err}");
}

/// The output loads in sft-compose as format `rft`, detected and forced.
#[test]
fn output_loads_as_rft() {
    let dir = tempdir();
    let out = dir.path().join("rft.jsonl");
    let (records, _) = filter_files(
        &fixture("questions.jsonl"),
        &fixture("candidates.jsonl"),
        FilterOptions::default(),
    )
    .unwrap();
    write_records(&out, &records).unwrap();
    for format in [None, Some(SourceFormat::Rft)] {
        let options = LoadOptions {
            format,
            ..LoadOptions::strict()
        };
        let loaded = load_source("math", &out, &options).unwrap();
        assert_eq!(loaded.format, SourceFormat::Rft);
        assert_eq!(loaded.records.len(), records.len());
        for (rec, want) in loaded.records.iter().zip(&records) {
            assert_eq!(rec.messages.len(), 2);
            assert_eq!(rec.messages[0].role, Role::User);
            assert_eq!(rec.messages[0].content, want.query);
            assert_eq!(rec.messages[1].role, Role::Assistant);
            assert_eq!(rec.messages[1].content, want.response);
        }
    }
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("rft.jsonl")]);
}

#[test]
fn duplicate_question_texts_each_judge_every_candidate() {
    let q = |a: &str| Question {
        query: "Same?".into(),
        response: format!("<<1+1=2>>\n#### {a}"),
    };
    let mut f = RftFilter::new(vec![q("2"), q("3")], FilterOptions::default()).unwrap();
    f.push("Same?", "<<1+1=2>>2\n#### 2");
    f.push("Same?", "<<1+2=3>>3\n#### 3");
    f.push("Other?", "#### 2");
    let (records, stats) = f.finish();
    let responses: Vec<&str> = records.iter().map(|r| r.response.as_str()).collect();
    assert_eq!(
        responses,
        [
            "<<1+1=2>>\n#### 2",
            "<<1+1=2>>2\n#### 2",
            "<<1+1=2>>\n#### 3",
            "<<1+2=3>>3\n#### 3"
        ]
    );
    assert_eq!(
        (
            stats.duplicate_questions,
            stats.candidates,
            stats.unmatched_candidates
        ),
        (1, 3, 1)
    );
    assert_eq!((stats.correct, stats.wrong_answer, stats.kept), (2, 2, 2));
}

#[test]
fn bad_inputs_name_file_and_line() {
    let dir = tempdir();
    let q = dir.path().join("q.jsonl");
    std::fs::write(&q, "{\"question\": \"A?\", \"answer\": \"#### 1\"}\n\n{\"question\": \"B?\", \"answer\": \"no final answer\"}\n").unwrap();
    let err = filter_files(&q, &fixture("candidates.jsonl"), FilterOptions::default()).unwrap_err();
    assert!(matches!(err, RftError::GoldAnswer { line: 3, .. }), "{err}");
    assert!(
        err.to_string().starts_with(&format!("{}:3: ", q.display())),
        "{err}"
    );

    std::fs::write(
        &q,
        "{\"question\": \"A?\", \"answer\": \"#### 1\"}\n{\"prompt\": \"B?\"}\n",
    )
    .unwrap();
    let err = filter_files(&q, &fixture("candidates.jsonl"), FilterOptions::default()).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!("{}:2: ", q.display())),
        "{err}"
    );

    std::fs::write(&q, "{\"question\": \"A?\", \"answer\": \"#### 1\"}\n").unwrap();
    let c = dir.path().join("c.jsonl");
    std::fs::write(
        &c,
        "{\"query\": \"A?\", \"response\": \"#### 1\"}\n{\"query\": \"A?\", \"response\": \"#### 1",
    )
    .unwrap();
    let err = filter_files(&q, &c, FilterOptions::default()).unwrap_err();
    assert!(matches!(err, RftError::Json { line: 2, .. }), "{err}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "the JSON cause is kept"
    );
    assert!(
        err.to_string().starts_with(&format!("{}:2: ", c.display())),
        "{err}"
    );

    std::fs::write(&c, "{\"query\": \"A?\"}\n").unwrap();
    let err = filter_files(&q, &c, FilterOptions::default()).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!("{}:1: ", c.display())),
        "{err}"
    );

    let missing = dir.path().join("missing.jsonl");
    let err = filter_files(&q, &missing, FilterOptions::default()).unwrap_err();
    assert!(matches!(err, RftError::Io { .. }), "{err}");

    std::fs::write(&q, "\n\n").unwrap();
    let err = filter_files(&q, &c, FilterOptions::default()).unwrap_err();
    assert!(matches!(err, RftError::NoQuestions { .. }), "{err}");
}

#[test]
fn answers_are_extracted_like_the_script() {
    let cases: &[(&str, Option<f64>)] = &[
        ("#### 72", Some(72.0)),
        ("#### 1,000", Some(1000.0)),
        ("#### 10,00", Some(1000.0)),
        ("#### 18.", Some(18.0)),
        ("#### .5", Some(0.5)),
        ("#### -3", Some(-3.0)),
        ("#### -0", Some(0.0)),
        ("#### 1.2.3", None),
        ("#### .", None),
        ("#### ,", None),
        ("#### [invalid]", None),
        ("####72", None),
        ("#### $5 and later #### 6", Some(6.0)),
        ("#### 5 then #### 6", Some(5.0)),
        ("#### 1.2.3 then #### 6", None),
        ("text\u{0}#### 5", None),
        ("#### 5\u{0}#### 6", Some(5.0)),
        ("no answer", None),
        ("#### 3.5e2", Some(3.5)),
    ];
    for (text, want) in cases {
        assert_eq!(extract_answer(text), *want, "{text:?}");
    }
}

#[test]
fn spans_and_keys() {
    let t = "a <<1 + 1=2>> b <<2*3=6>> <<a>b>> <<<4=4>> <<x\ny=1>>";
    assert_eq!(calc_spans(t), ["1 + 1=2", "2*3=6", "<4=4", "x\ny=1"]);
    assert_eq!(path_key(&["1 + 1=2", "2*3 =6"]), "1+1=2|2*3=6");
    assert_eq!(path_key(&[]), "");
    // Only U+0020 is removed, as the script's replace(' ', '').
    assert_eq!(path_key(&["1\t+1=2"]), "1\t+1=2");
    assert!(passes_calc_check("no spans at all #### 3"));
    assert!(!passes_calc_check("<<1+1=2>> <<2+2>>"));
}

#[test]
fn evaluator_has_python_semantics() {
    let ok = [
        ("1+1", 2.0),
        ("-2**2", -4.0),
        ("2**-1", 0.5),
        ("2**3**2", 512.0),
        ("--5", 5.0),
        ("+5", 5.0),
        ("(1\n+2)", 3.0),
        ("1\n", 1.0),
        ("\n1", 1.0),
        ("\t1", 1.0),
        ("1\\\n+2", 3.0),
        ("1\x0c+2", 3.0),
        ("- 2", -2.0),
        ("2*-3", -6.0),
        ("2**-3**2", 0.001953125),
        ("-2**-2", -0.25),
        ("4/-2", -2.0),
        ("00", 0.0),
        ("0_0", 0.0),
        ("1_000", 1000.0),
        ("5.", 5.0),
        (".5", 0.5),
        ("05.5", 5.5),
        ("1e3", 1000.0),
        ("1.e2", 100.0),
        ("0x10", 16.0),
        ("7/2", 3.5),
        ("(3+4)*2", 14.0),
        ("8/2/2", 2.0),
        ("2-3-4", -5.0),
        ("(-8)**2", 64.0),
        ("(-8.0)**2.0", 64.0),
        ("1e308*10/1e308*0+1", f64::NAN),
    ];
    for (e, want) in ok {
        let got = eval_arith(e);
        if want.is_nan() {
            assert!(got.is_err(), "{e:?}: {got:?}");
        } else {
            assert_eq!(got, Ok(want), "{e:?}");
        }
    }
    let bad = [
        "05",
        "1\n+2",
        "1\r+2",
        "(2)(3)",
        "2 3",
        "",
        "()",
        "1__0",
        "1_",
        "1 # c",
        "1/0",
        "0**-1",
        "(-8)**0.5",
        "10.0**400",
        "1\u{a0}+2",
        "7%2",
        "7//2",
        "2x3",
        "$5",
        "5j",
        "(1",
        "1)",
        "1,000",
        "abs(1)",
        "1..2",
        "1.2.3",
        "e5",
        "1e",
        "2**",
        "*2",
        "1 +",
    ];
    for e in bad {
        assert!(
            eval_arith(e).is_err(),
            "{e:?} should fail: {:?}",
            eval_arith(e)
        );
    }
    // Python refuses more than 200 nested parentheses.
    let deep = format!("{}1{}", "(".repeat(201), ")".repeat(201));
    assert!(eval_arith(&deep).is_err());
    let ok_deep = format!("{}1{}", "(".repeat(200), ")".repeat(200));
    assert_eq!(eval_arith(&ok_deep), Ok(1.0));
    assert_eq!(eval_arith(&format!("{}1", "-".repeat(1001))), Ok(-1.0));
    assert!(eval_arith(&"-".repeat(100_000)).is_err());
    assert!(eval_arith(&format!("{}1", "1**".repeat(5000))).is_err());
    assert_eq!(eval_arith(&format!("{}1", "1**".repeat(500))), Ok(1.0));
}

#[test]
fn rhs_parses_as_python_float() {
    for (s, v) in [
        (" 5 ", 5.0),
        ("5.", 5.0),
        (".5", 0.5),
        ("1_000", 1000.0),
        ("+5", 5.0),
        ("-.5", -0.5),
        ("1e5", 1e5),
        ("5\n", 5.0),
        ("\u{a0}5", 5.0),
        ("18.", 18.0),
    ] {
        assert_eq!(parse_python_float(s), Some(v), "{s:?}");
    }
    for s in [
        "1__0", "_1", "inf", "nan", "1,000", "0x10", "1.2.3", "", ".", "-", "1e", "\u{1c}5", "5$",
    ] {
        assert_eq!(parse_python_float(s), None, "{s:?}");
    }
}

#[test]
fn check_equation_follows_the_script() {
    assert!(check_equation("48/2=24"));
    assert!(check_equation("48/2 = 24 "));
    assert!(check_equation("10/3=3.333"));
    assert!(!check_equation("10/3=3.33"));
    assert!(check_equation("2+2=4=ignored"));
    assert!(!check_equation("2+2"));
    assert!(!check_equation("2+2=5"));
    assert!(!check_equation("=4"));
    assert!(!check_equation("2+2="));
    assert!(!check_equation("1000*2=2,000"));
    assert!(!check_equation("5/0=0"));
}

// ---------------------------------------------------------------------------------------------
// Property tests over generated candidates (seeded, plain loops).

struct Gen(ChaCha8Rng);

impl Gen {
    fn below(&mut self, n: u32) -> u32 {
        self.0.next_u32() % n
    }
    fn chance(&mut self, percent: u32) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u32) as usize]
    }
}

fn with_commas(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One generated question: its gold, and candidates in their per-question order.
struct GenQuestion {
    question: Question,
    candidates: Vec<String>,
}

fn generate(seed: u64, n_questions: usize) -> Vec<GenQuestion> {
    let mut g = Gen(ChaCha8Rng::seed_from_u64(seed));
    (0..n_questions)
        .map(|qi| {
            let gold = 1 + u64::from(g.below(5000));
            let query = format!("Question {qi} (seed {seed}): what is the total?");
            // A few distinct equation lists ("paths"), each correct.
            let paths: Vec<Vec<(String, String, String)>> = (0..1 + g.below(4))
                .map(|_| {
                    (0..g.below(4))
                        .map(|_| {
                            let a = 1 + g.below(90);
                            let b = 1 + g.below(12);
                            match g.below(4) {
                                0 => (format!("{a}*{b}"), "".into(), (a * b).to_string()),
                                1 => (format!("{a}+{b}"), "".into(), (a + b).to_string()),
                                2 => (format!("{}/{b}", a * b), "".into(), a.to_string()),
                                _ => (
                                    format!("{a}/{b}"),
                                    "".into(),
                                    format!("{:.4}", f64::from(a) / f64::from(b)),
                                ),
                            }
                        })
                        .collect()
                })
                .collect();
            let answer = format!("<<{gold}-0={gold}>>\n#### {}", with_commas(gold));
            let n = g.below(12) as usize;
            let candidates = (0..n)
                .map(|_| {
                    let path = &paths[g.below(paths.len() as u32) as usize];
                    let spaced = g.chance(40);
                    let mut spans: Vec<String> = path
                        .iter()
                        .map(|(lhs, _, rhs)| {
                            if spaced {
                                format!("{} = {rhs}", lhs.replace('*', " * ").replace('+', " + "))
                            } else {
                                format!("{lhs}={rhs}")
                            }
                        })
                        .collect();
                    if !spans.is_empty() && g.chance(20) {
                        let i = g.below(spans.len() as u32) as usize;
                        let broken = g.pick(&[
                            "9*9=80",
                            "9*9",
                            "9 x 9=81",
                            "9/0=0",
                            "9%2=1",
                            "9**0.5=3.1",
                            "(9=9",
                            "09*1=9",
                        ]);
                        spans[i] = broken.to_string();
                    }
                    let words = g.pick(&["So", "Then we get", "That is", "Thus,", "We compute"]);
                    let body: String = spans
                        .iter()
                        .map(|s| format!("{words} <<{s}>> and "))
                        .collect();
                    let tail = match g.below(10) {
                        0 => "#### [invalid]".to_string(),
                        1 => format!("#### {}", gold + 1),
                        2 => "The answer is unclear.".to_string(),
                        3 => format!("#### {}.", gold),
                        4 => format!("#### {}", with_commas(gold)),
                        5 => format!("#### {gold}.0"),
                        _ => format!("#### {gold}"),
                    };
                    format!("{body}the end.\n{tail}")
                })
                .collect();
            GenQuestion {
                question: Question {
                    query,
                    response: answer,
                },
                candidates,
            }
        })
        .collect()
}

/// Feeds the questions in `order` with their candidates interleaved by a seeded merge (each
/// question's own candidates stay in order).
fn run_generated(
    qs: &[GenQuestion],
    order: &[usize],
    seed: u64,
    options: FilterOptions,
) -> (Vec<RftRecord>, FilterStats) {
    let mut f = RftFilter::new(
        order.iter().map(|&i| qs[i].question.clone()).collect(),
        options,
    )
    .unwrap();
    let mut g = Gen(ChaCha8Rng::seed_from_u64(seed));
    let mut next = vec![0usize; qs.len()];
    let mut remaining: Vec<usize> = (0..qs.len())
        .filter(|&i| !qs[i].candidates.is_empty())
        .collect();
    while !remaining.is_empty() {
        let k = g.below(remaining.len() as u32) as usize;
        let qi = remaining[k];
        f.push(&qs[qi].question.query, &qs[qi].candidates[next[qi]]);
        next[qi] += 1;
        if next[qi] == qs[qi].candidates.len() {
            remaining.swap_remove(k);
        }
    }
    f.finish()
}

/// Output blocks per query: [gold, kept...].
fn blocks(records: &[RftRecord]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in records {
        out.entry(r.query.clone())
            .or_default()
            .push(r.response.clone());
    }
    out
}

fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut g = Gen(ChaCha8Rng::seed_from_u64(seed));
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        p.swap(i, g.below(i as u32 + 1) as usize);
    }
    p
}

#[test]
fn property_order_of_unrelated_questions_does_not_matter() {
    for seed in 0..40u64 {
        let qs = generate(seed, 10);
        let identity: Vec<usize> = (0..qs.len()).collect();
        for options in [FilterOptions::default(), FilterOptions { dedup: false }] {
            let (base, base_stats) = run_generated(&qs, &identity, 1000 + seed, options);
            for trial in 0..4u64 {
                let order = permutation(qs.len(), seed * 31 + trial);
                let (other, stats) = run_generated(&qs, &order, 2000 + seed * 7 + trial, options);
                assert_eq!(blocks(&base), blocks(&other), "seed {seed} trial {trial}");
                assert_eq!(base_stats, stats, "seed {seed} trial {trial}");
                // Output follows question order.
                let queries: Vec<&str> = other.iter().map(|r| r.query.as_str()).collect();
                let mut dedup_queries = queries.clone();
                dedup_queries.dedup();
                let want: Vec<&str> = order
                    .iter()
                    .map(|&i| qs[i].question.query.as_str())
                    .collect();
                assert_eq!(dedup_queries, want);
            }
        }
    }
}

#[test]
fn property_every_kept_path_is_correct_checked_and_distinct() {
    let mut total_kept = 0;
    let mut total_replaced = 0;
    for seed in 100..160u64 {
        let qs = generate(seed, 10);
        let identity: Vec<usize> = (0..qs.len()).collect();
        let (records, stats) = run_generated(&qs, &identity, seed, FilterOptions::default());
        let by_query = blocks(&records);
        total_kept += stats.kept;
        total_replaced += stats.replaced;
        for q in &qs {
            let block = &by_query[&q.question.query];
            assert_eq!(block[0], q.question.response, "the gold answer comes first");
            let gold = extract_answer(&q.question.response).unwrap();
            let kept = &block[1..];
            let mut keys = Vec::new();
            for path in kept {
                assert_eq!(
                    extract_answer(path),
                    Some(gold),
                    "kept path with a wrong answer: {path:?}"
                );
                assert!(
                    passes_calc_check(path),
                    "kept path failing the check: {path:?}"
                );
                assert!(
                    q.candidates.contains(path),
                    "kept path that is no candidate: {path:?}"
                );
                keys.push(path_key(&calc_spans(path)));
            }
            // One path per distinct key of the correct, checked candidates, in first-seen order.
            let mut seen = HashSet::new();
            let want_keys: Vec<String> = q
                .candidates
                .iter()
                .filter(|c| extract_answer(c) == Some(gold) && passes_calc_check(c))
                .map(|c| path_key(&calc_spans(c)))
                .filter(|k| seen.insert(k.clone()))
                .collect();
            assert_eq!(keys, want_keys, "seed {seed}");
        }
        let (all, all_stats) = run_generated(&qs, &identity, seed, FilterOptions { dedup: false });
        let all_blocks = blocks(&all);
        for q in &qs {
            let gold = extract_answer(&q.question.response).unwrap();
            let correct: Vec<&String> = q
                .candidates
                .iter()
                .filter(|c| extract_answer(c) == Some(gold))
                .collect();
            let got: Vec<&String> = all_blocks[&q.question.query][1..].iter().collect();
            assert_eq!(got, correct);
        }
        assert_eq!(all_stats.kept, all_stats.correct);
        assert_eq!(stats.correct, all_stats.correct);
    }
    // The generator exercises the interesting branches.
    assert!(total_kept > 500, "{total_kept}");
    assert!(total_replaced > 20, "{total_replaced}");
}
