//! An MoE of Gemma experts, which no transformers class describes.

use anyhow::{Result, bail};
use serde_json::Value;

use crate::config::ModelConfig;

pub fn gemma_moe_config(_config: &ModelConfig, _closest: bool) -> Result<Value> {
    bail!("exporting an MoE of Gemma experts is not written yet")
}
