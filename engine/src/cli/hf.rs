//! `btx import-hf`, `btx export-hf` and `btx logits` (the cross-check with transformers).

use std::path::PathBuf;

use anyhow::Result;
use burn::prelude::*;

use crate::checkpoint::{load_model, resolve_checkpoint};

#[derive(clap::Args)]
pub struct ImportArgs {
    dir: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct ImportPeftArgs {
    /// The checkpoint the adapter was trained on (a Hugging Face model imported with
    /// `btx import-hf`, or any dense checkpoint).
    #[arg(long)]
    base: PathBuf,
    /// The PEFT adapter folder (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    checkpoint: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// The tokenizer.json to ship (default: the one the checkpoint was trained with).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Export routing Mixtral cannot express (Switch, soft, sample-top-1) as its closest
    /// top-k equivalent instead of refusing.
    #[arg(long)]
    closest: bool,
    /// transformers' own class (auto: where one exists) or MixtureKit's layout with the
    /// engine's modeling code (auto: an MoE of Gemma experts or with a router per projection).
    #[arg(long, value_enum, default_value = "auto")]
    format: crate::hf::ExportFormat,
}

#[derive(clap::Args)]
pub struct LogitsArgs {
    checkpoint: PathBuf,
    /// Token ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    tokens: Vec<i64>,
}

pub fn import(args: ImportArgs) -> Result<()> {
    let config = crate::hf::import_hf(&args.dir, &args.out)?;
    eprintln!("imported {} as {} ({:.2}M parameters)", args.dir.display(), args.out.display(), config.num_params() as f64 / 1e6);
    Ok(())
}

pub fn import_peft(args: ImportPeftArgs) -> Result<()> {
    let merged = crate::hf::peft_import::import_peft(&args.base, &args.adapter, &args.out)?;
    eprintln!("merged {merged} adapted modules of {} into {} as {}", args.adapter.display(), args.base.display(), args.out.display());
    Ok(())
}

pub fn export(args: ExportArgs) -> Result<()> {
    crate::hf::export_hf_as(&args.checkpoint, &args.out, args.tokenizer.as_deref(), args.closest, args.format)?;
    // The architecture the written config.json names.
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(args.out.join("config.json"))?)?;
    let arch = written["architectures"][0].as_str().unwrap_or("?").to_string();
    eprintln!("exported {} as {arch} to {}", args.checkpoint.display(), args.out.display());
    Ok(())
}

pub fn logits(args: LogitsArgs) -> Result<()> {
    let device = Device::flex();
    let (_, model) = load_model(&resolve_checkpoint(&args.checkpoint)?, &device)?;
    let n = args.tokens.len();
    let input = Tensor::<2, Int>::from_data(TensorData::new(args.tokens, [1, n]), &device);
    let logits: Vec<f32> = model.forward(input).into_data().convert::<f32>().try_to_vec().expect("f32 logits");
    let rows: Vec<&[f32]> = logits.chunks(logits.len() / n).collect();
    println!("{}", serde_json::to_string(&rows)?);
    Ok(())
}
