//! One model's pooled hidden-state vectors: [`Embeddings`], and how they were pooled: [`Pool`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How a record's per-token hidden states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pool {
    /// The mean over the record's tokens.
    Mean,
    /// The last token's state (what the model predicts the first answer token from).
    Last,
}

impl Pool {
    /// The name used on the command line and in files: `mean` or `last`.
    pub fn as_str(self) -> &'static str {
        match self {
            Pool::Mean => "mean",
            Pool::Last => "last",
        }
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Pool {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "mean" => Ok(Pool::Mean),
            "last" => Ok(Pool::Last),
            other => Err(format!(
                "unknown pooling `{other}` (expected `mean` or `last`)"
            )),
        }
    }
}

/// One model's vectors, one per record: what the hidden-state extraction produces and what
/// [`analyze`](crate::analyze) and [`write_outputs`](crate::write_outputs) take.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// The model's label (e.g. `base`, `dmt`).
    pub model: String,
    /// The layer as requested (transformers' `hidden_states` numbering: 0 is the embedding
    /// output, `L` the output of block `L`; negative counts from the end).
    pub layer: i64,
    /// How the tokens were pooled.
    pub pool: Pool,
    /// The sft-compose record id of each row.
    pub ids: Vec<String>,
    /// The source (e.g. `math`, `code`, `general`) of each row.
    pub sources: Vec<String>,
    /// How many tokens each record had as the model saw it.
    pub n_tokens: Vec<usize>,
    /// The vector length.
    pub dim: usize,
    /// Row-major, `ids.len() × dim`.
    pub vectors: Vec<f32>,
}

impl Embeddings {
    /// The number of records.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Row `i`'s vector.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }

    /// The distinct sources in order of first appearance.
    pub fn source_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for s in &self.sources {
            if !names.contains(s) {
                names.push(s.clone());
            }
        }
        names
    }

    /// Checks that the fields fit together: the per-record vectors have one entry per id, the
    /// vectors are `len × dim` finite numbers, ids are unique and non-empty, there are at least two
    /// sources and each has at least `min_per_source` records.
    pub fn validate(&self, min_per_source: usize) -> Result<()> {
        let bad = |message: String| Error::Input {
            model: self.model.clone(),
            message,
        };
        let n = self.ids.len();
        if n == 0 {
            return Err(bad("no records".into()));
        }
        if self.sources.len() != n {
            return Err(bad(format!("{} ids but {} sources", n, self.sources.len())));
        }
        if self.n_tokens.len() != n {
            return Err(bad(format!(
                "{} ids but {} token counts",
                n,
                self.n_tokens.len()
            )));
        }
        if self.dim == 0 {
            return Err(bad("vector dimension is 0".into()));
        }
        if self.vectors.len() != n * self.dim {
            return Err(bad(format!(
                "{} values in `vectors`, expected {} records × {} dimensions = {}",
                self.vectors.len(),
                n,
                self.dim,
                n * self.dim
            )));
        }
        if let Some(i) = self.vectors.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!(
                "record `{}` has a non-finite value ({}) at dimension {}",
                self.ids[i / self.dim],
                self.vectors[i],
                i % self.dim
            )));
        }
        let mut seen = std::collections::HashSet::with_capacity(n);
        for id in &self.ids {
            if id.is_empty() {
                return Err(bad("an empty record id".into()));
            }
            if !seen.insert(id.as_str()) {
                return Err(bad(format!("record id `{id}` appears twice")));
            }
        }
        if let Some(i) = self.sources.iter().position(String::is_empty) {
            return Err(bad(format!(
                "record `{}` has an empty source name",
                self.ids[i]
            )));
        }
        let names = self.source_names();
        if names.len() < 2 {
            return Err(bad(format!(
                "separation needs at least 2 sources, found {} ({})",
                names.len(),
                names.join(", ")
            )));
        }
        for name in &names {
            let count = self.sources.iter().filter(|s| *s == name).count();
            if count < min_per_source {
                return Err(bad(format!(
                    "source `{name}` has {count} record(s); the {min_per_source}-fold probe needs at least {min_per_source} per source"
                )));
            }
        }
        Ok(())
    }
}
