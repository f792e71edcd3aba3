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
    /// "Where the gains go": each BTX or BAM merge's terms on each expert's own domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounting: Vec<AccountingRecord>,
    /// The figures drawn beside report.md.
    pub figures: Vec<FigureRecord>,
    /// Every evaluated model, in the report's order.
    pub models: Vec<ModelRecord>,
    /// Every stage's manifest figures.
    pub stages: Vec<StageRecord>,
}

/// BTX - dense = -prize + averaging cost + routing cost - finetune gain, on one expert's own
/// domain (validation loss, nats); a term the run could not measure is None.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountingRecord {
    /// Its FFN inside the averaged shared weights minus it alone (BAM: not measured).
    pub averaging_cost: Option<f64>,
    pub domain: String,
    pub expert: String,
    /// The MoE after its finetune minus before.
    pub finetune_gain: Option<f64>,
    pub merge: String,
    /// The compute-matched dense model minus the expert alone.
    pub prize: Option<f64>,
    /// The MoE before its finetune minus the expert inside the averaged shared weights.
    pub routing_cost: Option<f64>,
    /// The finetuned MoE minus the dense model.
    pub versus_dense: Option<f64>,
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
