//! `RUN/report.json`: one typed schema for the report writer and for its readers (the report
//! across seeds, the sweep). Fields are declared in name order, the order the file has always
//! had (it was written as a sorted JSON map), so reports written before and after these types
//! are the same bytes.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::entries::EntryKind;

pub const REPORT_JSON: &str = "report.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRecord {
    /// The figures drawn beside report.md.
    pub figures: Vec<FigureRecord>,
    /// Every evaluated model, in the report's order.
    pub models: Vec<ModelRecord>,
    /// Every stage's manifest figures.
    pub stages: Vec<StageRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FigureRecord {
    pub file: String,
    pub height: u32,
    /// The texts drawn on it (titles, labels, legends).
    pub texts: Vec<String>,
    pub width: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Exact-match accuracy per arithmetic domain.
    pub accuracy: BTreeMap<String, f64>,
    pub domains: Vec<DomainRecord>,
    pub kind: EntryKind,
    /// Mean of the domains' validation losses.
    pub mean_loss: f64,
    /// The model's label in the report.
    pub model: String,
    /// For models that route: `(domain, [layer][expert] shares)`.
    pub routing: Vec<(String, Vec<Vec<f64>>)>,
    /// Task -> headline score (lm-eval's first metric and filter), where the recipe scores tasks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tasks: BTreeMap<String, super::report_tasks::TaskScore>,
    /// Tokens and training FLOPs of every stage behind the model.
    pub tokens: u64,
    pub train_flops: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainRecord {
    pub domain: String,
    pub loss: f64,
    pub perplexity: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub device: String,
    /// A training stage's peak learning rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_lr: Option<f64>,
    pub stage: String,
    pub tokens: u64,
    pub train_flops: f64,
    pub wall_time_s: f64,
}

impl ReportRecord {
    /// Reads `run/report.json`.
    pub fn read(run: &Path) -> Result<Self> {
        let path = run.join(REPORT_JSON);
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {} (has the run finished?)", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a recipe report", path.display()))
    }

    pub fn write(&self, run: &Path) -> Result<()> {
        crate::fsutil::write_atomic(&run.join(REPORT_JSON), serde_json::to_string_pretty(self)?.as_bytes())
    }
}
