//! Task evaluation as lm-evaluation-harness scores it: its task YAML files (the subset that
//! describes tasks on local files), its prompts, few-shot sampling, requests and metrics, its
//! results file. Supported keys: see `config.rs` (and the README's task section).

pub mod config;
pub mod config_scoring;
pub mod dataset;
pub mod evaluate;
pub mod metrics;
pub mod model;
pub mod prompt;
pub mod python_random;
pub mod results;
pub mod sacrebleu;
pub mod template;
pub mod yaml;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub use config::TaskConfig;

/// Python's `str.isspace` (what `split()`, `strip()` and `rstrip()` use in lm-eval and
/// sacreBLEU): Rust's `char::is_whitespace` plus U+001C..U+001F, which Python counts and Rust
/// does not.
pub fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}
pub use evaluate::{TaskModel, TaskOptions, TaskResult, TaskTokenizer, evaluate_task};

/// Task files named on the command line: files, or folders (their `*.yaml`, sorted).
pub fn task_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot list {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("{}: no task files (*.yaml) in this folder", path.display());
            }
            files.extend(found);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            bail!("task file {} not found", path.display());
        }
    }
    Ok(files)
}

/// The tokenizer of a model as lm-eval's `hf` backend uses it: BOS and EOS from the
/// `tokenizer_config.json` beside `tokenizer.json` (or the engine's `<|endoftext|>`).
pub fn task_tokenizer(tokenizer_json: &Path) -> Result<TaskTokenizer> {
    let tokenizer = crate::data::tokenizer::load_tokenizer(tokenizer_json)?;
    let config: serde_json::Value = std::fs::read_to_string(tokenizer_json.with_file_name("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let token_text = |key: &str| -> Option<String> {
        match config.get(key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
            _ => None,
        }
    };
    let default = crate::data::tokenizer::END_OF_TEXT.to_string();
    let has_config = config.is_object();
    let bos_text = if has_config { token_text("bos_token") } else { Some(default.clone()) };
    let eos_text = if has_config { token_text("eos_token") } else { Some(default) };
    let bos = bos_text.as_deref().and_then(|t| tokenizer.token_to_id(t));
    let eos = eos_text.as_deref().and_then(|t| tokenizer.token_to_id(t));
    let prefix_token = bos.or(eos).with_context(|| format!("{}: the tokenizer has neither a BOS nor an EOS token (lm-eval scores an empty context after one)", tokenizer_json.display()))?;
    Ok(TaskTokenizer { tokenizer, prefix_token, bos_text: bos.and(bos_text), eos_token: eos })
}
