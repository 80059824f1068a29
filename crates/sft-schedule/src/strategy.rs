//! The paper's strategies (RQ1 individual sources, RQ4 multi-task, sequential, mixed sequential,
//! DMT) as built-in plans over the three standard sources.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, Result};
use crate::plan::{OptimizerState, Plan, Stage};
use sft_compose::Ratio;
use sft_config::{TrainConfig, TrainOverrides};

/// The code source (Code Alpaca in the paper).
pub const CODE: &str = "code";
/// The math source (GSM8K RFT in the paper; plain GSM8K train here).
pub const MATH: &str = "math";
/// The general source (ShareGPT).
pub const GENERAL: &str = "general";
/// The three sources the built-in strategies read, sorted.
pub const STANDARD_SOURCES: [&str; 3] = [CODE, GENERAL, MATH];

/// The values of DMT's `k` the paper scans (§4.3, Figure 5), as `(numerator, denominator)`.
pub const DMT_K_GRID: [(u64, u64); 8] = [
    (1, 1),
    (1, 2),
    (1, 4),
    (1, 8),
    (1, 16),
    (1, 32),
    (1, 64),
    (1, 256),
];

/// A built-in training strategy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// One SFT run on one source (the paper's "General only", "Math only", "Code only").
    Individual(String),
    /// One SFT run on the union of code, math and general.
    MultiTask,
    /// Code, then math, then general: three SFT runs, each from the previous one's weights.
    Sequential,
    /// Code + math, then general.
    MixedSequential,
    /// Dual-stage Mixed Fine-tuning: code + math, then general plus a proportion `k` of the code
    /// and math data. `k = 0` trains the same stages as mixed sequential.
    Dmt {
        /// The proportion of each specialized source added to the second stage, in `[0, 1]`.
        k: Ratio,
    },
}

impl Strategy {
    /// DMT with a validated `k` (`0 ≤ k ≤ 1`).
    pub fn dmt(k: Ratio) -> Result<Strategy> {
        if k.numer() > k.denom() {
            return Err(Error::KOutOfRange { k: k.to_string() });
        }
        Ok(Strategy::Dmt { k })
    }

    /// Parses `individual:<source>`, `multi-task`, `sequential`, `mixed-sequential` or `dmt:<k>`
    /// (`k` as `1/256`, `0.25`, …; `dmt` alone means the paper's headline `k = 1/256`).
    /// Underscores may replace hyphens, and `code-only`-style names select an individual source.
    pub fn parse(text: &str) -> Result<Strategy> {
        let t = text.trim().to_ascii_lowercase().replace('_', "-");
        let unknown = || Error::UnknownStrategy {
            text: text.to_string(),
        };
        if let Some(rest) = t.strip_prefix("dmt") {
            let k = match rest.strip_prefix(':').or_else(|| rest.strip_prefix("-k")) {
                Some(k) => k.replace('-', "/"),
                None if rest.is_empty() => "1/256".to_string(),
                None => return Err(unknown()),
            };
            let k = Ratio::parse(&k).map_err(|source| Error::Ratio {
                context: format!("strategy {text:?}"),
                source,
            })?;
            return Strategy::dmt(k);
        }
        if let Some(source) = t
            .strip_prefix("individual:")
            .or_else(|| t.strip_prefix("individual-"))
            .or_else(|| t.strip_suffix("-only"))
        {
            if source.is_empty() {
                return Err(unknown());
            }
            return Ok(Strategy::Individual(source.to_string()));
        }
        match t.as_str() {
            "multi-task" | "multitask" => Ok(Strategy::MultiTask),
            "sequential" => Ok(Strategy::Sequential),
            "mixed-sequential" => Ok(Strategy::MixedSequential),
            _ => Err(unknown()),
        }
    }

    /// A name safe for file systems: `individual-math`, `multi-task`, `dmt-k1_256`.
    pub fn name(&self) -> String {
        match self {
            Strategy::Individual(s) => format!("individual-{s}"),
            Strategy::MultiTask => "multi-task".into(),
            Strategy::Sequential => "sequential".into(),
            Strategy::MixedSequential => "mixed-sequential".into(),
            Strategy::Dmt { k } => format!("dmt-k{}", k.to_string().replace('/', "_")),
        }
    }

    /// The row label the paper's Table 1 uses: `Math only`, `Multi-task`, `DMT (k=1/256)`.
    pub fn label(&self) -> String {
        match self {
            Strategy::Individual(s) => {
                let mut c = s.chars();
                match c.next() {
                    Some(f) => format!("{}{} only", f.to_uppercase(), c.as_str()),
                    None => "only".into(),
                }
            }
            Strategy::MultiTask => "Multi-task".into(),
            Strategy::Sequential => "Sequential".into(),
            Strategy::MixedSequential => "Mixed sequential".into(),
            Strategy::Dmt { k } => format!("DMT (k={k})"),
        }
    }

    /// The strategy's stages, with empty training overrides, the default trainer config and
    /// restarting optimizers; [`Plan::with_train`] resolves the settings a run trains with.
    pub fn plan(&self) -> Plan {
        let one = Ratio::ONE;
        let stage = |name: &str, mixture: &[(&str, Ratio)]| Stage {
            index: 0,
            name: name.to_string(),
            mixture: mixture
                .iter()
                .map(|(s, r)| (s.to_string(), *r))
                .collect::<BTreeMap<_, _>>(),
            train: TrainOverrides::default(),
            config: TrainConfig::default(),
            optimizer_state: OptimizerState::Restart,
        };
        let stages = match self {
            Strategy::Individual(s) => vec![stage(s, &[(s, one)])],
            Strategy::MultiTask => vec![stage(
                "multi-task",
                &[(CODE, one), (MATH, one), (GENERAL, one)],
            )],
            Strategy::Sequential => {
                vec![
                    stage(CODE, &[(CODE, one)]),
                    stage(MATH, &[(MATH, one)]),
                    stage(GENERAL, &[(GENERAL, one)]),
                ]
            }
            Strategy::MixedSequential => {
                vec![
                    stage("specialized", &[(CODE, one), (MATH, one)]),
                    stage(GENERAL, &[(GENERAL, one)]),
                ]
            }
            Strategy::Dmt { k } if k.is_zero() => {
                vec![
                    stage("specialized", &[(CODE, one), (MATH, one)]),
                    stage(GENERAL, &[(GENERAL, one)]),
                ]
            }
            Strategy::Dmt { k } => vec![
                stage("specialized", &[(CODE, one), (MATH, one)]),
                stage("general+k", &[(GENERAL, one), (CODE, *k), (MATH, *k)]),
            ],
        };
        // Every built-in has named, non-empty stages with unique names; `Plan::new` only renumbers.
        match Plan::new(self.name(), stages.clone()) {
            Ok(plan) => plan,
            Err(_) => Plan {
                name: self.name(),
                stages,
            },
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::Individual(s) => write!(f, "individual:{s}"),
            Strategy::Dmt { k } => write!(f, "dmt:{k}"),
            other => f.write_str(&other.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::KeyContext;

    fn r(n: u64, d: u64) -> Ratio {
        Ratio::new(n, d).unwrap()
    }

    fn mix(stage: &Stage) -> Vec<(String, String)> {
        stage
            .mixture
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn individual_is_one_stage_of_one_whole_source() {
        for s in STANDARD_SOURCES {
            let plan = Strategy::parse(&format!("individual:{s}")).unwrap().plan();
            assert_eq!(plan.stages.len(), 1);
            assert_eq!(mix(&plan.stages[0]), pairs(&[(s, "1")]));
        }
        assert_eq!(
            Strategy::parse("math_only").unwrap(),
            Strategy::Individual("math".into())
        );
        assert_eq!(Strategy::Individual("math".into()).label(), "Math only");
    }

    #[test]
    fn multi_task_is_one_stage_of_all_three_sources() {
        let plan = Strategy::parse("multi-task").unwrap().plan();
        assert_eq!(plan.stages.len(), 1);
        assert_eq!(
            mix(&plan.stages[0]),
            pairs(&[("code", "1"), ("general", "1"), ("math", "1")])
        );
    }

    #[test]
    fn sequential_is_code_then_math_then_general() {
        let plan = Strategy::parse("sequential").unwrap().plan();
        let order: Vec<Vec<(String, String)>> = plan.stages.iter().map(mix).collect();
        assert_eq!(
            order,
            vec![
                pairs(&[("code", "1")]),
                pairs(&[("math", "1")]),
                pairs(&[("general", "1")])
            ]
        );
        assert!(plan
            .stages
            .iter()
            .all(|s| s.optimizer_state == OptimizerState::Restart));
        assert_eq!(
            plan.stages.iter().map(|s| s.index).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn mixed_sequential_is_specialized_then_general() {
        let plan = Strategy::parse("mixed-sequential").unwrap().plan();
        assert_eq!(plan.stages.len(), 2);
        assert_eq!(mix(&plan.stages[0]), pairs(&[("code", "1"), ("math", "1")]));
        assert_eq!(mix(&plan.stages[1]), pairs(&[("general", "1")]));
    }

    #[test]
    fn dmt_adds_k_of_each_specialized_source_to_all_general_data() {
        for (n, d) in DMT_K_GRID {
            let k = r(n, d);
            let plan = Strategy::dmt(k).unwrap().plan();
            assert_eq!(plan.stages.len(), 2);
            assert_eq!(mix(&plan.stages[0]), pairs(&[("code", "1"), ("math", "1")]));
            assert_eq!(plan.stages[1].take(GENERAL), Some(Ratio::ONE));
            assert_eq!(plan.stages[1].take(CODE), Some(k));
            assert_eq!(plan.stages[1].take(MATH), Some(k));
        }
        // k = 1/4 on pools of 20,022 code and 7,473 math records: floor(n/4) of each.
        let plan = Strategy::parse("dmt:1/4").unwrap().plan();
        assert_eq!(plan.stages[1].count_of(CODE, 20_022), 5_005);
        assert_eq!(plan.stages[1].count_of(MATH, 7_473), 1_868);
        assert_eq!(plan.stages[1].count_of(GENERAL, 1_011), 1_011);
    }

    #[test]
    fn dmt_k_zero_is_mixed_sequential_and_k_above_one_is_refused() {
        let ctx = KeyContext {
            base_model: "m".into(),
            sources: STANDARD_SOURCES
                .iter()
                .map(|s| (s.to_string(), s.to_string()))
                .collect(),
            world_size: 1,
        };
        let dmt0 = Strategy::parse("dmt:0").unwrap().plan();
        let ms = Strategy::MixedSequential.plan();
        assert_eq!(dmt0.stage_keys(&ctx).unwrap(), ms.stage_keys(&ctx).unwrap());

        let err = Strategy::parse("dmt:2").unwrap_err();
        assert!(matches!(err, Error::KOutOfRange { .. }), "{err}");
        assert!(err.to_string().contains("0 ≤ k ≤ 1"));
        assert!(Strategy::parse("dmt:-1").is_err());
        assert!(Strategy::parse("dmt:abc")
            .unwrap_err()
            .to_string()
            .contains("dmt:abc"));
    }

    #[test]
    fn dmt_and_mixed_sequential_share_their_first_stage() {
        let ctx = KeyContext {
            base_model: "m".into(),
            sources: STANDARD_SOURCES
                .iter()
                .map(|s| (s.to_string(), s.to_string()))
                .collect(),
            world_size: 1,
        };
        let ms = Strategy::MixedSequential.plan().stage_keys(&ctx).unwrap();
        let mut second = Vec::new();
        for (n, d) in DMT_K_GRID {
            let keys = Strategy::dmt(r(n, d))
                .unwrap()
                .plan()
                .stage_keys(&ctx)
                .unwrap();
            assert_eq!(keys[0].key, ms[0].key);
            second.push(keys[1].key.clone());
        }
        second.push(ms[1].key.clone());
        second.sort();
        second.dedup();
        assert_eq!(
            second.len(),
            DMT_K_GRID.len() + 1,
            "every k has its own second stage"
        );
    }

    #[test]
    fn names_and_labels_round_trip() {
        for text in [
            "individual:code",
            "multi-task",
            "sequential",
            "mixed-sequential",
            "dmt:1/256",
            "dmt:1/2",
        ] {
            let s = Strategy::parse(text).unwrap();
            assert_eq!(s.to_string(), text);
            assert_eq!(Strategy::parse(&s.name()).unwrap(), s, "{}", s.name());
        }
        assert_eq!(
            Strategy::parse("dmt").unwrap(),
            Strategy::dmt(r(1, 256)).unwrap()
        );
        assert_eq!(
            Strategy::parse("dmt:1/256").unwrap().label(),
            "DMT (k=1/256)"
        );
        assert_eq!(Strategy::parse("dmt:0.25").unwrap().name(), "dmt-k1_4");
        assert!(matches!(
            Strategy::parse("round-robin"),
            Err(Error::UnknownStrategy { .. })
        ));
    }
}
