//! Metrics as JSON lines (`RUN/metrics.jsonl`): one object per training step and per
//! evaluation. On resume, lines after the checkpoint's step are dropped, so the file always
//! describes exactly one run.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens the log, keeping only lines whose `step` is at most `keep_through_step`.
    pub fn open(path: &Path, keep_through_step: usize) -> Result<Self> {
        let kept: String = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|line| {
                serde_json::from_str::<Value>(line)
                    .ok()
                    .and_then(|v| v.get("step").and_then(Value::as_u64))
                    .is_some_and(|s| s as usize <= keep_through_step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        crate::fsutil::write_atomic(path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    pub fn write(&mut self, value: Value) -> Result<()> {
        writeln!(self.file, "{value}").with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Reads every line of a metrics file.
pub fn read_metrics(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}
