//! Task evaluation as lm-evaluation-harness scores it: its task YAML files (the subset that
//! describes tasks on local files), its prompts, few-shot sampling, requests and metrics, its
//! results file. Supported keys: see `config.rs` (and the README's task section).

pub mod config;
pub mod config_scoring;
pub mod csv_data;
pub mod dataset;
pub mod evaluate;
pub mod metrics;
pub mod model;
pub mod prompt;
pub mod python_random;
pub mod requests;
pub mod results;
pub mod sacrebleu;
pub mod template;
pub mod tokenizer;
pub mod yaml;

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

pub use config::TaskConfig;

/// Python's `str.isspace` (what `split()`, `strip()` and `rstrip()` use in lm-eval and
/// sacreBLEU): Rust's `char::is_whitespace` plus U+001C..U+001F, which Python counts and Rust
/// does not.
pub fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}
pub use evaluate::{TaskModel, TaskOptions, TaskResult, evaluate_task};
pub use tokenizer::{TaskTokenizer, task_tokenizer};

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

