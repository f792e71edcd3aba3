//! The recipe's report: per-domain validation perplexity (and arithmetic exact match) of the
//! seed, each expert, each merge before and after finetuning and the baselines, with the
//! tokens and training FLOPs behind each; loss curves and routing heatmaps as PNG. It lays
//! out the records `report_inputs` reads.

use std::fmt::Write as _;

use anyhow::Result;

use super::entries::{Entry, EntryKind};
use super::plan::Plan;
use super::report_figures::{Figures, write_loss_curves, write_pipeline, write_routing, write_summary};
use super::stage::{Manifest, Stage};
use super::stage_id::StageId;
use crate::eval::EvalReport;
use super::report_record::{DomainRecord, ModelRecord, ReportRecord, StageRecord};
use crate::fsutil::write_atomic;

pub(super) struct Row {
    pub(super) entry: Entry,
    pub(super) eval: EvalReport,
    /// Task -> headline score, where the recipe scores tasks.
    pub(super) tasks: std::collections::BTreeMap<String, super::report_tasks::TaskScore>,
    /// Tokens and training FLOPs of every stage behind the model.
    pub(super) tokens: u64,
    pub(super) flops: f64,
}

impl Row {
    pub(super) fn mean_loss(&self) -> f64 {
        self.eval.mean_loss()
    }

    pub(super) fn loss(&self, domain: usize) -> f64 {
        self.eval.domains[domain].loss
    }

    /// `[domain][panel][expert]` shares for models that route (an MoE's layers, or the
    /// ensemble's prior as one panel), with the domain's name.
    pub(super) fn routing<'a>(&'a self) -> Vec<(&'a str, Vec<Vec<f64>>)> {
        if !self.entry.kind.routes() {
            return vec![];
        }
        let chosen = |d: &'a crate::eval::DomainEval| d.routing.as_ref().filter(|r| r.chooses()).map(|r| (d.domain.as_str(), r.panels()));
        self.eval.domains.iter().filter_map(chosen).collect()
    }

    /// Whether its routing is an ensemble's prior (not an MoE's routers).
    pub(super) fn routes_by_prior(&self) -> bool {
        self.eval.domains.iter().any(|d| matches!(d.routing, Some(crate::eval::DomainRouting::Prior(_))))
    }
}

pub fn write_report(plan: &Plan<'_>, entries: &[(Entry, Stage)]) -> Result<()> {
    let inputs = super::report_inputs::ReportInputs::load(plan, entries)?;
    let (rows, stages) = (&inputs.rows, &inputs.stages);

    let name = plan.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut md = format!("# Recipe report: {name}\n\n");
    write_table(&mut md, rows, stages, plan.recipe.seed)?;
    write_baselines(&mut md, plan)?;
    super::report_merge::write_diagnosis(&mut md, plan, &inputs)?;
    let accounting = super::report_merge::accounting(plan, rows);
    super::report_merge::write_accounting(&mut md, &accounting)?;
    super::report_merge::write_sharpness(&mut md, plan, &inputs)?;
    write_drops(&mut md, &inputs)?;
    write_winners(&mut md, rows)?;
    let mut figures = Figures::new();
    super::report_tasks::write_tasks(&mut md, plan, rows, &mut figures)?;
    write_summary(&mut md, plan, rows, &mut figures)?;
    write_pipeline(&mut md, plan, &inputs, &mut figures)?;
    write_loss_curves(&mut md, plan, &inputs, &mut figures)?;
    write_routing(&mut md, plan, rows, &mut figures)?;
    writeln!(md, "\n## Stages\n\n| stage | peak lr | tokens | train FLOPs | wall time | device |\n|---|---:|---:|---:|---:|---|")?;
    for m in stages {
        let lr = m.peak_lr().unwrap_or_else(|| "-".into());
        let adapter = m.adapter.map_or(String::new(), |a| format!(" (adapter {a})"));
        writeln!(md, "| {} | {lr} | {} | {:.3e} | {:.1} s | {}{adapter} |", m.stage, m.tokens, m.train_flops, m.wall_time_s, m.device)?;
    }
    write_json(plan, rows, stages, &figures, accounting)?;
    write_atomic(&plan.out.join("report.md"), md.as_bytes())?;
    eprintln!("report: {}", plan.out.join("report.md").display());
    Ok(())
}

/// The table: perplexity per domain and mean, tokens, FLOPs; the best final model in bold.
fn write_table(md: &mut String, rows: &[Row], stages: &[Manifest], seed: u64) -> Result<()> {
    let mut devices: Vec<&str> = stages.iter().filter(|m| m.tokens > 0).map(|m| m.device.as_str()).collect();
    devices.sort();
    devices.dedup();
    let domain_names: Vec<&str> = rows.first().map(|r| r.eval.domains.iter().map(|d| d.domain.as_str()).collect()).unwrap_or_default();
    let finals: Vec<&Row> = rows.iter().filter(|r| r.entry.kind == EntryKind::Final).collect();
    writeln!(md, "Validation perplexity per domain (lower is better), mean = exp(mean of the domains' losses). Tokens and training FLOPs (6 x active parameters x tokens, plus attention) count every stage that produced the model, the seed's included. Trained on: {}. One seed ({}): no spread is measured, so small differences may be noise; the recipe field `seeds` runs several and calls differences within their spread ties.\n", devices.join(", "), seed)?;
    writeln!(md, "| model | tokens | train FLOPs | {} | mean | arithmetic exact match |", domain_names.join(" | "))?;
    writeln!(md, "|---|---:|---:|{}---:|---:|", "---:|".repeat(domain_names.len()))?;
    let bold = |best: bool, v: f64| if best { format!("**{v:.2}**") } else { format!("{v:.2}") };
    for r in rows.iter().filter(|r| r.entry.kind != EntryKind::Diagnosis) {
        let is_final = r.entry.kind == EntryKind::Final;
        let cells: Vec<String> = r
            .eval
            .domains
            .iter()
            .enumerate()
            .map(|(i, d)| bold(is_final && finals.iter().all(|f| f.loss(i) >= r.loss(i)), d.perplexity))
            .collect();
        let mean = bold(is_final && finals.iter().all(|f| f.mean_loss() >= r.mean_loss()), r.mean_loss().exp());
        let acc: Vec<String> = r.eval.accuracy.values().map(|a| format!("{:.0}%", a * 100.0)).collect();
        let acc = if acc.is_empty() { "-".to_string() } else { acc.join(", ") };
        writeln!(md, "| {} | {:.2}M | {:.3e} | {} | {mean} | {acc} |", r.entry.label(), r.tokens as f64 / 1e6, r.flops, cells.join(" | "))?;
    }
    Ok(())
}

/// Models whose routing dropped tokens for capacity (Switch): the dropped share of
/// token-expert assignments at evaluation (mean over domains) and in finetuning (mean over
/// steps), beside the mean perplexity. Omitted when nothing was dropped.
fn write_drops(md: &mut String, inputs: &super::report_inputs::ReportInputs) -> Result<()> {
    let training_drops = |r: &Row| -> Option<f64> {
        let stage = r.entry.lineage.last().filter(|s| matches!(s, StageId::Finetune(_)))?;
        let drops: Vec<f64> = inputs.steps(stage)?.iter().filter_map(|s| s.dropped).collect();
        (!drops.is_empty()).then(|| drops.iter().sum::<f64>() / drops.len() as f64)
    };
    let dropping: Vec<(&Row, f64, Option<f64>)> = inputs
        .rows
        .iter()
        .map(|r| (r, r.eval.domains.iter().map(|d| d.dropped).sum::<f64>() / r.eval.domains.len().max(1) as f64, training_drops(r)))
        .filter(|(_, eval, train)| *eval > 0.0 || train.is_some_and(|t| t > 0.0))
        .collect();
    if dropping.is_empty() {
        return Ok(());
    }
    writeln!(md, "\nTokens dropped for expert capacity (Switch routing; share of token-expert assignments):\n")?;
    writeln!(md, "| model | mean perplexity | dropped at evaluation | dropped in finetuning |\n|---|---:|---:|---:|")?;
    for (r, eval, train) in dropping {
        let train = train.map_or("-".to_string(), |t| format!("{:.1}%", t * 100.0));
        writeln!(md, "| {} | {:.2} | {:.1}% | {train} |", r.entry.label(), r.mean_loss().exp(), eval * 100.0)?;
    }
    Ok(())
}

/// What each baseline was matched to.
fn write_baselines(md: &mut String, plan: &Plan<'_>) -> Result<()> {
    let r = plan.recipe;
    let mut lines = Vec::new();
    if r.dense_baseline {
        lines.push("**dense**: compute-matched, the seed continued on the finetune mixture for the training FLOPs of every expert plus the BTX finetune.".to_string());
    }
    if r.data_matched_baseline {
        let tokens_per_step = (r.batch_size * r.seq_len) as f64;
        let per_domain: Vec<String> = plan.data_matched_mixture().iter().map(|(d, steps)| format!("{d} {:.0} tokens", steps * tokens_per_step)).collect();
        lines.push(format!("**dense (data-matched)**: the seed continued on the same tokens per domain as the BTX model saw after the seed (experts and finetune): {}.", per_domain.join(", ")));
    }
    if r.match_flops && r.merges.iter().any(|m| matches!(m.method, super::config::MergeMethod::Upcycle { .. })) {
        lines.push("**upcycling**: compute-matched, finetuned for the training FLOPs of every expert plus the BTX finetune.".to_string());
    }
    if !lines.is_empty() {
        writeln!(md, "\nBaselines:\n")?;
        for l in lines {
            writeln!(md, "- {l}")?;
        }
    }
    Ok(())
}

/// Which final model wins each domain and the mean (omitted when there is one final model).
fn write_winners(md: &mut String, rows: &[Row]) -> Result<()> {
    let finals: Vec<&Row> = rows.iter().filter(|r| r.entry.kind == EntryKind::Final).collect();
    if finals.len() < 2 {
        return Ok(());
    }
    writeln!(md, "\nBold: the best of the final models (finetuned merges, averages, ensembles, dense baseline).\n")?;
    for (i, d) in finals[0].eval.domains.iter().enumerate() {
        let w = finals.iter().min_by(|a, b| a.loss(i).total_cmp(&b.loss(i))).expect("two finals");
        writeln!(md, "- {}: **{}** wins (perplexity {:.2})", d.domain, w.entry.label(), w.eval.domains[i].perplexity)?;
    }
    let w = finals.iter().min_by(|a, b| a.mean_loss().total_cmp(&b.mean_loss())).expect("two finals");
    writeln!(md, "- on average: **{}** wins (mean perplexity {:.2})", w.entry.label(), w.mean_loss().exp())?;
    let spread: Vec<String> = finals.iter().map(|f| format!("{} {:.2e}", f.entry.label(), f.flops)).collect();
    writeln!(md, "\nTraining FLOPs of the final models: {}.", spread.join(", "))?;
    Ok(())
}

fn write_json(plan: &Plan<'_>, rows: &[Row], stages: &[Manifest], figures: &Figures, accounting: Vec<super::report_record::AccountingRecord>) -> Result<()> {
    let models = rows
        .iter()
        .map(|r| ModelRecord {
            accuracy: r.eval.accuracy.clone(),
            domains: r.eval.domains.iter().map(|d| DomainRecord { domain: d.domain.clone(), loss: d.loss, perplexity: d.perplexity }).collect(),
            kind: r.entry.kind,
            mean_loss: r.mean_loss(),
            model: r.entry.label(),
            routing: r.routing().into_iter().map(|(d, shares)| (d.to_string(), shares)).collect(),
            tasks: r.tasks.clone(),
            tokens: r.tokens,
            train_flops: r.flops,
        })
        .collect();
    let stages = stages
        .iter()
        .map(|m| StageRecord {
            device: m.device.clone(),
            peak_lr: m.train_config().map(|c| c.optimizer.lr),
            stage: m.stage.clone(),
            tokens: m.tokens,
            train_flops: m.train_flops,
            wall_time_s: m.wall_time_s,
        })
        .collect();
    ReportRecord { accounting, figures: figures.clone(), models, stages }.write(&plan.out)
}
