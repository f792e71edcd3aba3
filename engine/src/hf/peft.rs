//! LoRA adapters in PEFT's format: `adapter_config.json` and `adapter_model.safetensors`,
//! whose tensors are `base_model.model.<module>.lora_A.weight` `[r, in]` and `lora_B.weight`
//! `[out, r]` (PyTorch's layout; the engine holds A `[in, r]` and B `[r, out]`). A dense LoRA
//! run writes its adapters so before merging them, so that `peft` can load them onto the
//! run's base model exported to Hugging Face (`btx export-hf`), with the engine's logits.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};

use crate::checkpoint::module_tensors::module_to_tensors;
use crate::checkpoint::tensor_file::{TensorMap, to_safetensors_bytes};
use crate::model::LanguageModel;
use crate::model::lora::LoraConfig;

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The PEFT tensors of `model`'s adapters: every `X.lora_a` / `X.lora_b` checkpoint tensor as
/// `base_model.model.X.lora_A.weight` / `lora_B.weight`, transposed to PyTorch's layout.
pub fn peft_tensors(model: &LanguageModel) -> TensorMap {
    module_to_tensors(model)
        .into_iter()
        .filter_map(|(name, host)| {
            let (module, which) = match (name.strip_suffix(".lora_a"), name.strip_suffix(".lora_b")) {
                (Some(module), _) => (module.to_string(), "lora_A"),
                (_, Some(module)) => (module.to_string(), "lora_B"),
                _ => return None,
            };
            Some((format!("base_model.model.{module}.{which}.weight"), host.transposed()))
        })
        .collect()
}

/// Writes `model`'s adapters (trained with `lora`) into the folder `dir`, atomically.
pub fn write_peft_adapter(model: &LanguageModel, lora: &LoraConfig, dir: &Path) -> Result<()> {
    if model.layers.iter().any(|b| b.block_sparse_moe.is_some()) {
        bail!("PEFT adapters are written for dense models only (an MoE's experts have no per-expert module names in transformers' MoE classes)");
    }
    let tensors = peft_tensors(model);
    if tensors.is_empty() {
        bail!("the model carries no LoRA adapters to write");
    }
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": lora.rank,
        "lora_alpha": lora.alpha(),
        "lora_dropout": lora.dropout,
        "target_modules": lora.targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "base_model_name_or_path": null,
        "revision": null,
        "layers_to_transform": null,
        "rank_pattern": {},
        "alpha_pattern": {},
    });
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let weights = to_safetensors_bytes(&tensors, metadata)?;
    crate::fsutil::write_dir_atomic(dir, |tmp| {
        std::fs::write(tmp.join(ADAPTER_CONFIG_FILE), serde_json::to_string_pretty(&config)?)?;
        std::fs::write(tmp.join(ADAPTER_WEIGHTS_FILE), &weights)?;
        Ok(())
    })
}
