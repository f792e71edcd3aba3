//! Hugging Face interoperability: import a Llama-family, Qwen2, Qwen3 (or Mixtral) folder as
//! an engine checkpoint, export a dense model as its family's architecture and a Llama-family
//! MoE as MixtralForCausalLM.
//! The engine's checkpoints already use Hugging Face tensor names and layouts, so conversion
//! is a config translation plus a tensor-by-tensor copy (streamed: no whole model in memory).

pub mod config;
pub mod peft;
pub mod qwen_moe;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::checkpoint::{MODEL_CONFIG_FILE, MODEL_FILE, TRAIN_CONFIG_FILE, read_model_config, resolve_checkpoint};
use crate::config::{ModelConfig, parse_ron, resolve, to_ron};
use crate::fsutil::{write_atomic, write_dir_atomic};
use config::{expected_tensors, from_hf_config, to_hf_config};
use crate::checkpoint::stream::{StreamWriter, TensorIndex};
use crate::checkpoint::tensor_file::HostTensor;
use qwen_moe::{ExportedTensor, qwen_moe_tensors};

/// Copies every tensor `config` needs from `index` into `path`, checking names and shapes.
fn copy_tensors(index: &TensorIndex, config: &ModelConfig, path: &Path, origin: &str) -> Result<()> {
    let same: Vec<ExportedTensor> = expected_tensors(config).into_iter().map(|(name, shape)| ExportedTensor::copy(name.clone(), shape, name)).collect();
    write_exported(index, config, &same, path, origin)
}

/// Writes `exported` into `path` from the engine tensors of `index` (checked first).
fn write_exported(index: &TensorIndex, config: &ModelConfig, exported: &[ExportedTensor], path: &Path, origin: &str) -> Result<()> {
    check_tensors(index, config, origin)?;
    let mut writer = StreamWriter::create(path, exported.iter().map(|t| (t.name.clone(), t.shape.clone())).collect())?;
    for t in exported {
        let tensor = match &t.from {
            Some(from) => {
                let mut tensor = index.read(from)?;
                if t.scale != 1.0 {
                    tensor.values.iter_mut().for_each(|v| *v *= t.scale);
                }
                tensor
            }
            None => HostTensor::new(t.shape.clone(), vec![0.0; t.shape.iter().product()]),
        };
        writer.write(&t.name, &tensor)?;
    }
    writer.finish()
}

/// Checks that `index` holds exactly the tensors a model of `config` has, with their shapes.
fn check_tensors(index: &TensorIndex, config: &ModelConfig, origin: &str) -> Result<()> {
    let expected = expected_tensors(config);
    for (name, shape) in &expected {
        match index.tensors.get(name) {
            None => bail!("{origin}: missing tensor `{name}` (shape {shape:?})"),
            Some(t) if &t.shape != shape => bail!("{origin}: tensor `{name}` has shape {:?}, expected {shape:?}", t.shape),
            Some(_) => {}
        }
    }
    for name in index.tensors.keys() {
        let ignorable = name.ends_with("rotary_emb.inv_freq") || (config.tie_embeddings && name == "lm_head.weight");
        if !ignorable && !expected.iter().any(|(n, _)| n == name) {
            bail!("{origin}: unexpected tensor `{name}` (config.json describes no such parameter)");
        }
    }
    Ok(())
}

/// `btx import-hf`: a Hugging Face folder (config.json, safetensors, tokenizer.json) into
/// an engine checkpoint.
pub fn import_hf(dir: &Path, out: &Path) -> Result<ModelConfig> {
    let config_path = dir.join("config.json");
    let origin = config_path.display().to_string();
    let text = std::fs::read_to_string(&config_path).with_context(|| format!("cannot read {origin}"))?;
    let hf: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{origin} is not valid JSON"))?;
    let config = from_hf_config(&hf, &origin)?;
    let index = TensorIndex::open(dir)?;
    write_dir_atomic(out, |tmp| {
        copy_tensors(&index, &config, &tmp.join(MODEL_FILE), &dir.display().to_string())?;
        write_atomic(&tmp.join(MODEL_CONFIG_FILE), to_ron(&config)?.as_bytes())?;
        let tokenizer = dir.join("tokenizer.json");
        if tokenizer.is_file() {
            std::fs::copy(&tokenizer, tmp.join("tokenizer.json"))?;
        }
        crate::checkpoint::integrity::seal(tmp)
    })?;
    Ok(config)
}

/// The tokenizer a checkpoint was trained with, if it records one: its own tokenizer.json
/// (imported and merged checkpoints), else the one its train.ron names.
pub fn checkpoint_tokenizer(ckpt: &Path) -> Option<PathBuf> {
    let local = ckpt.join("tokenizer.json");
    if local.is_file() {
        return Some(local);
    }
    let text = std::fs::read_to_string(ckpt.join(TRAIN_CONFIG_FILE)).ok()?;
    let config: crate::train::TrainConfig = parse_ron(&text, "train.ron").ok()?;
    Some(resolve(&config.data.tokenizer)).filter(|p| p.is_file())
}

/// `btx export-hf`: an engine checkpoint as a LlamaForCausalLM, Qwen2ForCausalLM,
/// Qwen3ForCausalLM or MixtralForCausalLM folder; Qwen2MoeForCausalLM for an MoE with a
/// shared expert or of Qwen2 experts, Qwen3MoeForCausalLM for one of Qwen3 experts.
pub fn export_hf(ckpt: &Path, out: &Path, tokenizer: Option<&Path>, closest: bool) -> Result<ModelConfig> {
    let ckpt = resolve_checkpoint(ckpt)?;
    crate::checkpoint::integrity::verify(&ckpt)?;
    let config = read_model_config(&ckpt)?;
    let hf = to_hf_config(&config, closest)?;
    let tokenizer = match tokenizer {
        Some(t) => t.to_path_buf(),
        None => checkpoint_tokenizer(&ckpt).with_context(|| {
            format!("{} records no tokenizer (its members used different ones, or none); pass --tokenizer PATH/tokenizer.json", ckpt.display())
        })?,
    };
    let index = TensorIndex::open(&ckpt)?;
    write_dir_atomic(out, |tmp| {
        let origin = ckpt.display().to_string();
        match &config.moe {
            // Mixtral's tensors are the engine's; the Qwen MoEs' are named apart.
            Some(moe) if hf["model_type"] != "mixtral" => {
                write_exported(&index, &config, &qwen_moe_tensors(&config, moe), &tmp.join("model.safetensors"), &origin)?
            }
            _ => copy_tensors(&index, &config, &tmp.join("model.safetensors"), &origin)?,
        }
        write_atomic(&tmp.join("config.json"), serde_json::to_string_pretty(&hf)?.as_bytes())?;
        std::fs::copy(&tokenizer, tmp.join("tokenizer.json")).with_context(|| format!("cannot copy {}", tokenizer.display()))?;
        let tokenizer_config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": crate::data::tokenizer::END_OF_TEXT,
            "eos_token": crate::data::tokenizer::END_OF_TEXT,
            "model_max_length": config.max_seq_len,
        });
        write_atomic(&tmp.join("tokenizer_config.json"), serde_json::to_string_pretty(&tokenizer_config)?.as_bytes())?;
        Ok(())
    })?;
    Ok(config)
}
