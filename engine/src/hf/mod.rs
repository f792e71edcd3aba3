//! Hugging Face interoperability: import a Llama-family, Qwen2, Qwen3 (or Mixtral) folder as
//! an engine checkpoint, export a dense model as its family's architecture and a Llama-family
//! MoE as MixtralForCausalLM.
//! The engine's checkpoints already use Hugging Face tensor names and layouts, so conversion
//! is a config translation plus a tensor-by-tensor copy (streamed: no whole model in memory).

pub mod config;
pub mod gemma;
pub mod mixturekit;
pub mod peft;
pub mod peft_import;
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

/// A Hugging Face tokenizer's files: the tokenizer, its settings (special tokens), its chat
/// template (transformers 5 saves it apart) and the special-token map. Import and export carry
/// those present.
const TOKENIZER_FILES: [&str; 4] = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"];

/// Copies every tensor `config` needs from `index` into `path`, checking names and shapes.
fn copy_tensors(index: &TensorIndex, config: &ModelConfig, path: &Path, origin: &str) -> Result<()> {
    import_tensors(index, config, &SourceNames::Same, 0.0, path, origin).map(|_| ())
}

/// Where a checkpoint keeps the language model's tensors: under the engine's (Llama's) names,
/// or under a multimodal model's prefixes, beside tensors the engine does not import.
enum SourceNames {
    Same,
    /// Gemma3ForConditionalGeneration: `model.X` is `{model}X`, `lm_head.weight` is
    /// `{head}lm_head.weight`; names starting with one of `skipped` (the vision tower and its
    /// projector) are left out.
    Prefixed { model: &'static str, head: &'static str, skipped: &'static [&'static str] },
    /// A MixtureKit checkpoint: its routed modules' names (`mixturekit::mixturekit_name`); its
    /// routers may be missing (a fresh build).
    MixtureKit,
}

impl SourceNames {
    /// The layout of a Gemma3ForConditionalGeneration checkpoint: transformers 4.5x's (and
    /// 5.x's saved) `language_model.model.*`, or 5.x's in-memory `model.language_model.*`.
    fn of(index: &TensorIndex, arch: &str) -> Self {
        if arch == "MixtureKitForCausalLM" {
            return Self::MixtureKit;
        }
        if !arch.ends_with("ForConditionalGeneration") {
            return Self::Same;
        }
        if index.tensors.keys().any(|n| n.starts_with("model.language_model.")) {
            Self::Prefixed { model: "model.language_model.", head: "", skipped: &["model.vision_tower.", "model.multi_modal_projector."] }
        } else {
            Self::Prefixed { model: "language_model.model.", head: "language_model.", skipped: &["vision_tower.", "multi_modal_projector."] }
        }
    }

    fn source(&self, engine_name: &str) -> String {
        match self {
            Self::Same => engine_name.to_string(),
            Self::MixtureKit => mixturekit::mixturekit_name(engine_name),
            Self::Prefixed { model, head, .. } => match engine_name.strip_prefix("model.") {
                Some(rest) => format!("{model}{rest}"),
                None => format!("{head}{engine_name}"),
            },
        }
    }

    fn skips(&self, source_name: &str) -> bool {
        matches!(self, Self::Prefixed { skipped, .. } if skipped.iter().any(|p| source_name.starts_with(p)))
    }

    fn may_be_missing(&self, source_name: &str) -> bool {
        matches!(self, Self::MixtureKit) && mixturekit::may_be_missing(source_name)
    }
}

/// The standard deviation of the routers drawn where a MixtureKit build stored none: what
/// transformers draws them from (`initializer_range`), which MixtureKit's loader leaves them at.
fn drawn_router_std(hf: &serde_json::Value) -> f32 {
    hf.get("initializer_range").and_then(serde_json::Value::as_f64).unwrap_or(0.02) as f32
}

/// Copies every tensor `config` needs from `index` (named as `names` says) into `path`; a
/// missing router a MixtureKit build may lack is drawn from N(0, `router_std`^2). Returns how
/// many were drawn.
fn import_tensors(index: &TensorIndex, config: &ModelConfig, names: &SourceNames, router_std: f32, path: &Path, origin: &str) -> Result<usize> {
    let mut drawn = 0;
    let tensors: Vec<ExportedTensor> = expected_tensors(config)
        .into_iter()
        .map(|(name, shape)| {
            let source = names.source(&name);
            let mut tensor = ExportedTensor::copy(name, shape, source.clone());
            if !index.tensors.contains_key(&source) && names.may_be_missing(&source) {
                (tensor.from, tensor.init_std) = (None, router_std);
                drawn += 1;
            }
            tensor
        })
        .collect();
    check_tensors(index, config, names, origin)?;
    write_tensors(index, &tensors, path)?;
    Ok(drawn)
}

/// Writes `exported` into `path` from the engine tensors of `index` (checked first).
fn write_exported(index: &TensorIndex, config: &ModelConfig, exported: &[ExportedTensor], path: &Path, origin: &str) -> Result<()> {
    check_tensors(index, config, &SourceNames::Same, origin)?;
    write_tensors(index, exported, path)
}

/// Writes `exported` into `path` from the tensors of `index`.
fn write_tensors(index: &TensorIndex, exported: &[ExportedTensor], path: &Path) -> Result<()> {
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
            None => {
                // Drawn from the tensor's name alone: the same import gives the same model.
                let mut rng = crate::data::rng::Rng::new(crate::model::init::fnv1a(&t.name));
                HostTensor::new(t.shape.clone(), (0..t.shape.iter().product::<usize>()).map(|_| (rng.normal() * t.init_std as f64) as f32).collect())
            }
        };
        writer.write(&t.name, &tensor)?;
    }
    writer.finish()
}

/// Checks that `index` holds exactly the tensors a model of `config` has, with their shapes
/// (beside those `names` skips).
fn check_tensors(index: &TensorIndex, config: &ModelConfig, names: &SourceNames, origin: &str) -> Result<()> {
    let expected: Vec<(String, Vec<usize>)> = expected_tensors(config).into_iter().map(|(n, s)| (names.source(&n), s)).collect();
    let tied_head = names.source("lm_head.weight");
    for (name, shape) in &expected {
        match index.tensors.get(name) {
            None if names.may_be_missing(name) => {}
            None => bail!("{origin}: missing tensor `{name}` (shape {shape:?})"),
            Some(t) if &t.shape != shape => bail!("{origin}: tensor `{name}` has shape {:?}, expected {shape:?}", t.shape),
            Some(_) => {}
        }
    }
    for name in index.tensors.keys() {
        let ignorable = name.ends_with("rotary_emb.inv_freq") || (config.tie_embeddings && *name == tied_head) || names.skips(name);
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
    let arch = hf["architectures"].as_array().and_then(|a| a.first()).and_then(serde_json::Value::as_str).unwrap_or("");
    let names = SourceNames::of(&index, arch);
    if matches!(names, SourceNames::Prefixed { .. }) {
        eprintln!("{}: {arch}: importing its language model; the vision tower and its projector are left out", dir.display());
    }
    let router_std = drawn_router_std(&hf);
    write_dir_atomic(out, |tmp| {
        let drawn = import_tensors(&index, &config, &names, router_std, &tmp.join(MODEL_FILE), &dir.display().to_string())?;
        if drawn > 0 {
            eprintln!(
                "{}: {drawn} routers are missing (a MixtureKit build stores none until its routers are trained): drawn from N(0, {router_std}^2) as MixtureKit's loader draws them; finetune them (trainable: Routers) before use",
                dir.display()
            );
        }
        write_atomic(&tmp.join(MODEL_CONFIG_FILE), to_ron(&config)?.as_bytes())?;
        for file in TOKENIZER_FILES {
            if dir.join(file).is_file() {
                std::fs::copy(dir.join(file), tmp.join(file)).with_context(|| format!("cannot copy {}", dir.join(file).display()))?;
            }
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

/// What `btx export-hf` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ExportFormat {
    /// transformers' own class where one exists, else MixtureKit's format (an MoE of Gemma
    /// experts, a router per projection).
    #[default]
    Auto,
    /// transformers' own classes only (an error where none describes the model).
    Transformers,
    /// MixtureKit's checkpoint layout with the engine's modeling code (trust_remote_code).
    Mixturekit,
}

/// `btx export-hf`: an engine checkpoint as a LlamaForCausalLM, Qwen2ForCausalLM,
/// Qwen3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM or MixtralForCausalLM folder;
/// Qwen2MoeForCausalLM for an MoE with a shared expert or of Qwen2 experts, Qwen3MoeForCausalLM
/// for one of Qwen3 experts; MixtureKit's format for the MoEs no transformers class describes.
pub fn export_hf(ckpt: &Path, out: &Path, tokenizer: Option<&Path>, closest: bool) -> Result<ModelConfig> {
    export_hf_as(ckpt, out, tokenizer, closest, ExportFormat::Auto)
}

/// `export_hf` in the chosen format.
pub fn export_hf_as(ckpt: &Path, out: &Path, tokenizer: Option<&Path>, closest: bool, format: ExportFormat) -> Result<ModelConfig> {
    let ckpt = resolve_checkpoint(ckpt)?;
    crate::checkpoint::integrity::verify(&ckpt)?;
    let config = read_model_config(&ckpt)?;
    let no_class = config.moe.as_ref().is_some_and(|m| config.gemma.is_some() || !m.routed_projections.is_empty());
    let mixturekit = format == ExportFormat::Mixturekit || (format == ExportFormat::Auto && no_class);
    let (hf, base_config) = if mixturekit {
        let (hf, base_config) = mixturekit::to_mixturekit_config(&config)?;
        (hf, Some(base_config))
    } else {
        (to_hf_config(&config, closest)?, None)
    };
    let tokenizer = match tokenizer {
        Some(t) => t.to_path_buf(),
        None => checkpoint_tokenizer(&ckpt).with_context(|| {
            format!("{} records no tokenizer (its members used different ones, or none); pass --tokenizer PATH/tokenizer.json", ckpt.display())
        })?,
    };
    let index = TensorIndex::open(&ckpt)?;
    write_dir_atomic(out, |tmp| {
        let origin = ckpt.display().to_string();
        let weights = tmp.join("model.safetensors");
        match (&config.moe, &base_config) {
            (_, Some(base_config)) => {
                let renamed: Vec<ExportedTensor> = expected_tensors(&config).into_iter().map(|(name, shape)| ExportedTensor::copy(mixturekit::mixturekit_name(&name), shape, name)).collect();
                write_exported(&index, &config, &renamed, &weights, &origin)?;
                for (file, text) in mixturekit::modeling_files(hf["base_model_class"].as_str().unwrap_or_default(), base_config) {
                    write_atomic(&tmp.join(file), text.as_bytes())?;
                }
            }
            // Mixtral's tensors are the engine's; the Qwen MoEs' are named apart.
            (Some(moe), None) if hf["model_type"] != "mixtral" => write_exported(&index, &config, &qwen_moe_tensors(&config, moe), &weights, &origin)?,
            _ => copy_tensors(&index, &config, &weights, &origin)?,
        }
        write_atomic(&tmp.join("config.json"), serde_json::to_string_pretty(&hf)?.as_bytes())?;
        std::fs::copy(&tokenizer, tmp.join("tokenizer.json")).with_context(|| format!("cannot copy {}", tokenizer.display()))?;
        // The tokenizer's own settings and chat template where it has them (an imported
        // model's, the chat tokenizer's), else the shipped tokenizer's.
        for file in &TOKENIZER_FILES[1..] {
            let beside = tokenizer.with_file_name(file);
            if beside.is_file() {
                std::fs::copy(&beside, tmp.join(file)).with_context(|| format!("cannot copy {}", beside.display()))?;
            }
        }
        if !tmp.join("tokenizer_config.json").is_file() {
            let tokenizer_config = serde_json::json!({
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": crate::data::tokenizer::END_OF_TEXT,
                "eos_token": crate::data::tokenizer::END_OF_TEXT,
                "model_max_length": config.max_seq_len,
            });
            write_atomic(&tmp.join("tokenizer_config.json"), serde_json::to_string_pretty(&tokenizer_config)?.as_bytes())?;
        }
        Ok(())
    })?;
    Ok(config)
}
