//! A PEFT LoRA adapter merged into a checkpoint (`btx import-peft`): each adapted module's
//! weight becomes W + s B A, with A `[r, in]` and B `[out, r]` as PEFT stores them and
//! s = lora_alpha / r (lora_alpha / sqrt(r) with `use_rslora`), PEFT's own merge
//! (`LoraLayer.get_delta_weight`). Settings that would change what the adapter computes and
//! that this merge does not reproduce (DoRA, per-module ranks or alphas, trained biases,
//! saved modules, transposed layers) are refused naming the key and the file.

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::peft::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use crate::checkpoint::tensor_file::read_tensors;
use crate::checkpoint::{MODEL_FILE, read_model_config, resolve_checkpoint, write_tensor_checkpoint};

/// The merge scale of an adapter's `adapter_config.json`, after checking it describes a plain
/// LoRA adapter.
fn adapter_scale(path: &Path) -> Result<f64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    let at = path.display();
    if config["peft_type"].as_str() != Some("LORA") {
        bail!("{at}: field `peft_type` is {}, expected \"LORA\"", config["peft_type"]);
    }
    let truthy = |key: &str| config[key].as_bool() == Some(true);
    for key in ["use_dora", "fan_in_fan_out"] {
        if truthy(key) {
            bail!("{at}: field `{key}` is true, which this merge does not reproduce");
        }
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if config[key].as_object().is_some_and(|m| !m.is_empty()) {
            bail!("{at}: field `{key}` gives some modules their own rank or alpha, which this merge does not reproduce");
        }
    }
    if config["modules_to_save"].as_array().is_some_and(|m| !m.is_empty()) {
        bail!("{at}: field `modules_to_save` names fully trained modules, which this merge does not carry");
    }
    if config["bias"].as_str().is_some_and(|b| b != "none") {
        bail!("{at}: field `bias` is {}, expected \"none\" (trained biases are not merged)", config["bias"]);
    }
    let rank = config["r"].as_f64().filter(|r| *r >= 1.0).with_context(|| format!("{at}: field `r` must be a positive integer"))?;
    let alpha = config["lora_alpha"].as_f64().with_context(|| format!("{at}: field `lora_alpha` must be a number"))?;
    Ok(if truthy("use_rslora") { alpha / rank.sqrt() } else { alpha / rank })
}

/// Merges the adapter in folder `adapter` into checkpoint `base`, writing checkpoint `out`;
/// returns how many modules it changed.
pub fn import_peft(base: &Path, adapter: &Path, out: &Path) -> Result<usize> {
    let scale = adapter_scale(&adapter.join(ADAPTER_CONFIG_FILE))?;
    let weights_path = adapter.join(ADAPTER_WEIGHTS_FILE);
    let adapter_tensors = read_tensors(&weights_path)?;
    let base = resolve_checkpoint(base)?;
    let config = read_model_config(&base)?;
    let mut tensors = read_tensors(&base.join(MODEL_FILE))?;
    let at = weights_path.display();
    let mut merged = 0;
    for (name, a) in &adapter_tensors {
        let Some(module) = name.strip_suffix(".lora_A.weight") else {
            if !name.ends_with(".lora_B.weight") {
                bail!("{at}: tensor `{name}` is neither a lora_A nor a lora_B weight (DoRA magnitudes and other extras are not merged)");
            }
            continue;
        };
        let b = adapter_tensors.get(&format!("{module}.lora_B.weight")).with_context(|| format!("{at}: `{name}` has no lora_B beside it"))?;
        let target = format!("{}.weight", module.strip_prefix("base_model.model.").unwrap_or(module));
        let weight = tensors.get_mut(&target).with_context(|| format!("{at}: `{name}` adapts `{target}`, which {} does not have", base.display()))?;
        let ([out_dim, in_dim], [rank, a_in], [b_out, b_rank]) = (dims(&weight.shape), dims(&a.shape), dims(&b.shape));
        if a_in != in_dim || b_out != out_dim || b_rank != rank {
            bail!("{at}: `{module}`: A {:?} and B {:?} do not fit the weight {:?} ([out, in])", a.shape, b.shape, weight.shape);
        }
        for o in 0..out_dim {
            for i in 0..in_dim {
                let update: f32 = (0..rank).map(|r| b.values[o * rank + r] * a.values[r * in_dim + i]).sum();
                weight.values[o * in_dim + i] += scale as f32 * update;
            }
        }
        merged += 1;
    }
    if merged == 0 {
        bail!("{at}: no lora_A / lora_B pairs");
    }
    // The base's tokenizer files travel with it.
    let extra: Vec<(&str, String)> = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]
        .into_iter()
        .filter_map(|f| Some((f, std::fs::read_to_string(base.join(f)).ok()?)))
        .collect();
    write_tensor_checkpoint(out, &config, &tensors, &extra)?;
    Ok(merged)
}

/// A 2-D shape (a 1-D one reads as [n, 0], which then fits nothing).
fn dims(shape: &[usize]) -> [usize; 2] {
    [shape.first().copied().unwrap_or(0), if shape.len() == 2 { shape[1] } else { 0 }]
}
