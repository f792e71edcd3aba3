//! Task results in lm-evaluation-harness's own shapes: its results file (`results`,
//! `configs`, `versions`, `n-shot`, `higher_is_better`, `n-samples`, `config`, keys such as
//! `"acc,none"` and `"acc_stderr,none"`), so what reads lm-eval's results reads these, and its
//! Markdown table.

use std::path::Path;

use anyhow::Result;
use serde_json::{Map, Value, json};

use super::config::TaskConfig;
use super::evaluate::TaskResult;

/// The results file: `model` names what was evaluated (a checkpoint, an ensemble).
pub fn results_json(results: &[(TaskConfig, TaskResult)], model: Value, limit: Option<f64>) -> Value {
    let mut tasks = Map::new();
    let (mut configs, mut versions, mut n_shot, mut higher, mut n_samples) = (Map::new(), Map::new(), Map::new(), Map::new(), Map::new());
    for (config, result) in results {
        let mut entry = Map::new();
        entry.insert("name".into(), json!(result.task));
        entry.insert("alias".into(), json!(result.alias));
        entry.insert("sample_len".into(), json!(result.docs_effective));
        let mut better = Map::new();
        for score in &result.scores {
            entry.insert(format!("{},{}", score.metric, score.filter), json!(score.value));
            entry.insert(format!("{}_stderr,{}", score.metric, score.filter), score.stderr.map_or(json!("N/A"), |s| json!(s)));
            better.insert(score.metric.clone(), json!(score.higher_is_better));
        }
        tasks.insert(result.task.clone(), Value::Object(entry));
        configs.insert(result.task.clone(), Value::Object(config.raw.clone()));
        versions.insert(result.task.clone(), result.version.clone());
        n_shot.insert(result.task.clone(), json!(result.num_fewshot));
        higher.insert(result.task.clone(), Value::Object(better));
        n_samples.insert(result.task.clone(), json!({ "original": result.docs_original, "effective": result.docs_effective }));
    }
    let date = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    json!({
        "results": tasks,
        "group_subtasks": {},
        "configs": configs,
        "versions": versions,
        "n-shot": n_shot,
        "higher_is_better": higher,
        "n-samples": n_samples,
        "config": {
            "model": "btx",
            "model_args": model,
            "batch_size": "auto",
            "limit": limit,
            "bootstrap_iters": 100000,
            "fewshot_seed": super::prompt::FEWSHOT_SEED,
        },
        "date": date,
        "btx_version": env!("CARGO_PKG_VERSION"),
    })
}

pub fn write_results(path: &Path, results: &Value) -> Result<()> {
    crate::fsutil::write_atomic(path, serde_json::to_string_pretty(results)?.as_bytes())
}

/// lm-eval's table: one row per task, filter and metric.
pub fn results_table(results: &[TaskResult]) -> String {
    let mut rows = vec![["Tasks", "Version", "Filter", "n-shot", "Metric", "", "Value", "", "Stderr"].map(String::from).to_vec()];
    for result in results {
        for (i, score) in result.scores.iter().enumerate() {
            let version = match &result.version {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            rows.push(vec![
                if i == 0 { result.alias.clone() } else { String::new() },
                if i == 0 { version } else { String::new() },
                score.filter.clone(),
                if i == 0 { result.num_fewshot.to_string() } else { String::new() },
                score.metric.clone(),
                if score.higher_is_better { "↑" } else { "↓" }.into(),
                format!("{:.4}", score.value),
                "±".into(),
                score.stderr.map_or("N/A".into(), |s| format!("{s:.4}")),
            ]);
        }
    }
    let widths: Vec<usize> = (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let line = |row: &[String]| format!("|{}|", row.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect::<Vec<_>>().join("|"));
    let mut out = vec![line(&rows[0]), format!("|{}|", widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("|"))];
    out.extend(rows[1..].iter().map(|r| line(r)));
    out.join("\n")
}
