//! The [`Tagger`] trait and the code that runs one over a source.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use sft_record::Record;

/// One tag given to a record, with the rule (or model) that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagHit {
    /// The tag, e.g. `code`.
    pub tag: String,
    /// Which rule fired (for an LLM tagger: the model's explanation or name).
    pub rule: String,
}

/// Something that tags records: the offline [`crate::HeuristicTagger`] now, an InsTag-style LLM
/// tagger later (it would return the model's `{tag, explanation}` list as hits).
pub trait Tagger: Send + Sync {
    /// A stable name recorded in manifests (include a version when the rules change).
    fn name(&self) -> &str;
    /// The tags for one record; an empty list when nothing applies.
    fn tag(&self, record: &Record) -> Vec<TagHit>;
}

impl<T: Tagger + ?Sized> Tagger for Box<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn tag(&self, record: &Record) -> Vec<TagHit> {
        (**self).tag(record)
    }
}

/// What a tagger did to a source.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TaggingStats {
    /// The tagger's name.
    pub tagger: String,
    /// Records looked at.
    pub records: usize,
    /// Records that got at least one tag.
    pub records_tagged: usize,
    /// Records each rule fired on.
    pub per_rule: BTreeMap<String, usize>,
    /// Records carrying each tag.
    pub per_tag: BTreeMap<String, usize>,
}

/// Runs `tagger` over `records`, adding its tags, and counts what happened.
pub fn apply_tagger(tagger: &dyn Tagger, records: &mut [Record]) -> TaggingStats {
    let mut stats = TaggingStats {
        tagger: tagger.name().to_string(),
        records: records.len(),
        ..Default::default()
    };
    for record in records.iter_mut() {
        let hits = tagger.tag(record);
        if hits.is_empty() {
            continue;
        }
        stats.records_tagged += 1;
        let mut rules: Vec<&str> = hits.iter().map(|h| h.rule.as_str()).collect();
        rules.sort_unstable();
        rules.dedup();
        for rule in rules {
            *stats.per_rule.entry(rule.to_string()).or_insert(0) += 1;
        }
        let mut tags: Vec<String> = hits.iter().map(|h| h.tag.clone()).collect();
        tags.sort_unstable();
        tags.dedup();
        for tag in &tags {
            *stats.per_tag.entry(tag.clone()).or_insert(0) += 1;
        }
        record.add_tags(tags);
    }
    stats
}
