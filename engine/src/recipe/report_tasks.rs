//! The report's task section: each model's score on every task (its first listed metric
//! under its first filter), with the standard error lm-eval gives;
//! per task the best final model in bold, and any final model within the larger of the two
//! standard errors of it in bold too (a tie); a heatmap of scores per model and task.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::entries::EntryKind;
use super::plan::Plan;
use super::plots::{self, Heatmap};
use super::report::Row;
use super::report_figures::{Figures, save_png};

/// One task's headline score, as the report and report.json keep it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    /// `metric,filter` (lm-eval's key).
    pub metric: String,
    pub value: f64,
    pub stderr: Option<f64>,
    pub higher_is_better: bool,
}

/// Task -> headline score, read from an evaluation stage's tasks.json (lm-eval's shape).
pub fn read_task_scores(path: &std::path::Path) -> Result<BTreeMap<String, TaskScore>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not a task results file", path.display()))?;
    let mut scores = BTreeMap::new();
    let results = value["results"].as_object().with_context(|| format!("{}: no `results`", path.display()))?;
    for (task, entry) in results {
        let Some(entry) = entry.as_object() else { continue };
        // The headline: the task's first listed metric under its first filter (the results'
        // keys are in name order), else the first metric key found.
        let config = &value["configs"][task];
        let first_metric = config["metric_list"][0]["metric"].as_str();
        let first_filter = config["filter_list"][0]["name"].as_str().unwrap_or("none");
        let listed = first_metric.map(|m| format!("{m},{first_filter}")).filter(|k| entry.get(k).is_some_and(serde_json::Value::is_number));
        let Some((key, v)) = listed
            .as_ref()
            .and_then(|k| entry.get_key_value(k))
            .or_else(|| entry.iter().find(|(k, v)| k.contains(',') && !k.contains("_stderr,") && v.is_number()))
        else {
            continue;
        };
        let (metric, filter) = key.split_once(',').unwrap_or((key, "none"));
        let stderr = entry.get(&format!("{metric}_stderr,{filter}")).and_then(serde_json::Value::as_f64);
        let higher_is_better = value["higher_is_better"][task][metric].as_bool().unwrap_or(true);
        scores.insert(task.clone(), TaskScore { metric: key.clone(), value: v.as_f64().unwrap_or(f64::NAN), stderr, higher_is_better });
    }
    Ok(scores)
}

pub(super) fn write_tasks(md: &mut String, plan: &Plan<'_>, rows: &[Row], figures: &mut Figures) -> Result<()> {
    let rows: Vec<&Row> = rows.iter().filter(|r| !r.tasks.is_empty()).collect();
    if rows.is_empty() {
        return Ok(());
    }
    let tasks: Vec<&String> = rows[0].tasks.keys().collect();
    writeln!(md, "\n## Tasks\n")?;
    writeln!(
        md,
        "Scored as lm-evaluation-harness scores them (`btx eval --tasks`; the same YAML files run with `lm_eval --include_path`), value ± its standard error. Per task the best final model is in bold, and so is any final model within the larger of the two standard errors of it: a tie.\n"
    )?;
    writeln!(md, "| model | {} |", tasks.iter().map(|t| format!("{t} ({})", rows[0].tasks[*t].metric)).collect::<Vec<_>>().join(" | "))?;
    writeln!(md, "|---|{}", "---:|".repeat(tasks.len()))?;
    let finals: Vec<&&Row> = rows.iter().filter(|r| r.entry.kind == EntryKind::Final).collect();
    for r in &rows {
        let cells: Vec<String> = tasks
            .iter()
            .map(|t| {
                let Some(s) = r.tasks.get(*t) else { return "-".into() };
                let sign = if s.higher_is_better { 1.0 } else { -1.0 };
                let best = finals.iter().filter_map(|f| f.tasks.get(*t)).max_by(|a, b| (sign * a.value).total_cmp(&(sign * b.value)));
                let tie = r.entry.kind == EntryKind::Final
                    && best.is_some_and(|b| sign * (b.value - s.value) <= b.stderr.unwrap_or(0.0).max(s.stderr.unwrap_or(0.0)));
                let text = match s.stderr {
                    Some(e) => format!("{:.3} ± {e:.3}", s.value),
                    None => format!("{:.3}", s.value),
                };
                if tie { format!("**{text}**") } else { text }
            })
            .collect();
        writeln!(md, "| {} | {} |", r.entry.label(), cells.join(" | "))?;
    }
    // Shaded by the score over the task's best (so tasks of different scales read alike).
    let values: Vec<Vec<f64>> = rows.iter().map(|r| tasks.iter().map(|t| r.tasks.get(*t).map_or(0.0, |s| s.value)).collect()).collect();
    let best: Vec<f64> = (0..tasks.len()).map(|j| values.iter().map(|row| row[j]).fold(0.0, f64::max)).collect();
    let map = Heatmap {
        title: "Task scores per model".into(),
        rows: rows.iter().map(|r| r.entry.label()).collect(),
        columns: tasks.iter().map(|t| t.to_string()).collect(),
        panels: vec![values.iter().map(|row| row.iter().zip(&best).map(|(v, b)| if *b > 0.0 { v / b } else { 0.0 }).collect()).collect()],
        panel_label: String::new(),
        cell_text: vec![values.iter().map(|row| row.iter().map(|v| format!("{v:.2}")).collect()).collect()],
        scale_label: "score / best score on the task".into(),
    };
    save_png(plan, "tasks.png", plots::heatmap(&map), figures)?;
    writeln!(md, "\n![task scores](tasks.png)")?;
    Ok(())
}
