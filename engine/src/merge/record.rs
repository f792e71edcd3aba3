//! `merge.json`: what a merged or edited checkpoint records of how it was made, as one typed
//! schema for its writers (`btx merge`, `btx moe add-expert|remove-expert`) and readers (the
//! expert names of routing plots and exports).

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Deserializer, Serialize};

use super::mix::MoeOptions;

pub const MERGE_RECORD_FILE: &str = "merge.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeRecord {
    /// The merge method (as RON, e.g. `Upcycle(experts: 4, drop_ratio: 0.0)`) or the edit
    /// (`add-expert`, `remove-expert`).
    pub method: String,
    /// The checkpoints it was made from, in order (the seed last).
    pub sources: Vec<String>,
    /// The members' weights in averaged tensors (None: uniform).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<Vec<f64>>,
    /// A merge's MoE options.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "moe_options")]
    pub moe: Option<MoeOptions>,
    /// An edit: the expert added or removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expert: Option<String>,
    /// The name of each routed expert (index = expert id); empty for a dense result.
    #[serde(default)]
    pub expert_names: Vec<String>,
    /// A transplant measured with `drift_from`: how far its member's shared weights drifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<super::diagnosis::Drift>,
}

/// MoE options as JSON, or as the RON text that records written before this type held.
fn moe_options<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Option<MoeOptions>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Options(MoeOptions),
        Ron(String),
    }
    match Option::<Written>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Written::Options(options)) => Ok(Some(options)),
        Some(Written::Ron(text)) => crate::config::parse_ron(&text, "merge.json `moe`").map(Some).map_err(serde::de::Error::custom),
    }
}

impl MergeRecord {
    /// The record of the checkpoint folder `dir`, if it has one.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(MERGE_RECORD_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else { return Ok(None) };
        serde_json::from_str(&text).with_context(|| format!("{} is not a merge record", path.display())).map(Some)
    }

    /// The file's text, to be written with the checkpoint.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }
}
