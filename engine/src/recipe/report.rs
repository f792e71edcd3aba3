//! The recipe's report: per-domain validation perplexity (and arithmetic exact match) of the
//! seed, each expert, each merge before and after finetuning and the baselines, with the
//! tokens and training FLOPs behind each; loss curves and routing heatmaps as PNG.

use std::fmt::Write as _;

use anyhow::Result;
use serde_json::{Value, json};

use super::plan::{Entry, EntryKind, Plan, slug};
use super::png::{Canvas, PALETTE};
use super::stage::{Manifest, Stage};
use crate::eval::EvalReport;
use crate::fsutil::write_atomic;

struct Row {
    entry: Entry,
    eval: EvalReport,
    /// Tokens and training FLOPs of every stage behind the model.
    tokens: u64,
    flops: f64,
}

impl Row {
    fn mean_loss(&self) -> f64 {
        self.eval.mean_loss()
    }

    fn loss(&self, domain: usize) -> f64 {
        self.eval.domains[domain].loss
    }

    /// `[domain][layer][expert]` shares for models that route (MoE layers, or the
    /// ensemble's prior), with the domain's name.
    fn routing(&self) -> Vec<(&str, &Vec<Vec<f64>>)> {
        if !self.entry.kind.routes() {
            return vec![];
        }
        let routes = |r: &Vec<Vec<f64>>| !r.is_empty() && (r.len() > 1 || r[0].len() > 1);
        self.eval.domains.iter().filter(|d| routes(&d.routing)).map(|d| (d.domain.as_str(), &d.routing)).collect()
    }
}

fn read_manifest(plan: &Plan<'_>, stage: &str) -> Option<Manifest> {
    let text = std::fs::read_to_string(plan.out.join(stage).join(super::stage::MANIFEST_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Each compared model's evaluation, with the tokens and FLOPs of its lineage.
fn load_rows(plan: &Plan<'_>, entries: &[(Entry, Stage)]) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (entry, stage) in entries {
        let eval = EvalReport::read(&stage.dir.join("eval.json"))?;
        let (mut tokens, mut flops) = (0, 0.0);
        for m in entry.lineage.iter().filter_map(|s| read_manifest(plan, s)) {
            tokens += m.tokens;
            flops += m.train_flops;
        }
        rows.push(Row { entry: entry.clone(), eval, tokens, flops });
    }
    Ok(rows)
}

pub fn write_report(plan: &Plan<'_>, entries: &[(Entry, Stage)]) -> Result<()> {
    let rows = load_rows(plan, entries)?;
    let mut stages = Vec::new();
    for entry in std::fs::read_dir(&plan.out)?.flatten() {
        collect_manifests(&entry.path(), &mut stages);
    }
    stages.sort_by(|a, b| a.stage.cmp(&b.stage));

    let name = plan.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut md = format!("# Recipe report: {name}\n\n");
    write_table(&mut md, &rows, &stages)?;
    write_winners(&mut md, &rows)?;
    write_loss_curves(&mut md, plan)?;
    write_routing(&mut md, plan, &rows)?;
    writeln!(md, "\n## Stages\n\n| stage | tokens | train FLOPs | wall time | device |\n|---|---:|---:|---:|---|")?;
    for m in &stages {
        writeln!(md, "| {} | {} | {:.3e} | {:.1} s | {} |", m.stage, m.tokens, m.train_flops, m.wall_time_s, m.device)?;
    }
    write_json(plan, &rows, &stages)?;
    write_atomic(&plan.out.join("report.md"), md.as_bytes())?;
    eprintln!("report: {}", plan.out.join("report.md").display());
    Ok(())
}

/// The table: perplexity per domain and mean, tokens, FLOPs; the best final model in bold.
fn write_table(md: &mut String, rows: &[Row], stages: &[Manifest]) -> Result<()> {
    let mut devices: Vec<&str> = stages.iter().filter(|m| m.tokens > 0).map(|m| m.device.as_str()).collect();
    devices.sort();
    devices.dedup();
    let domain_names: Vec<&str> = rows.first().map(|r| r.eval.domains.iter().map(|d| d.domain.as_str()).collect()).unwrap_or_default();
    let finals: Vec<&Row> = rows.iter().filter(|r| r.entry.kind == EntryKind::Final).collect();
    writeln!(md, "Validation perplexity per domain (lower is better), mean = exp(mean of the domains' losses). Tokens and training FLOPs (6 x active parameters x tokens, plus attention) count every stage that produced the model, the seed's included. Trained on: {}.\n", devices.join(", "))?;
    writeln!(md, "| model | tokens | train FLOPs | {} | mean | arithmetic exact match |", domain_names.join(" | "))?;
    writeln!(md, "|---|---:|---:|{}---:|---:|", "---:|".repeat(domain_names.len()))?;
    let bold = |best: bool, v: f64| if best { format!("**{v:.2}**") } else { format!("{v:.2}") };
    for r in rows {
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
        writeln!(md, "| {} | {:.2}M | {:.3e} | {} | {mean} | {acc} |", r.entry.label, r.tokens as f64 / 1e6, r.flops, cells.join(" | "))?;
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
        writeln!(md, "- {}: **{}** wins (perplexity {:.2})", d.domain, w.entry.label, w.eval.domains[i].perplexity)?;
    }
    let w = finals.iter().min_by(|a, b| a.mean_loss().total_cmp(&b.mean_loss())).expect("two finals");
    writeln!(md, "- on average: **{}** wins (mean perplexity {:.2})", w.entry.label, w.mean_loss().exp())?;
    let spread: Vec<String> = finals.iter().map(|f| format!("{} {:.2e}", f.entry.label, f.flops)).collect();
    writeln!(md, "\nTraining FLOPs of the final models: {}.", spread.join(", "))?;
    Ok(())
}

/// Loss curves of every training stage, as one PNG.
fn write_loss_curves(md: &mut String, plan: &Plan<'_>) -> Result<()> {
    let mut curves = Vec::new();
    let stages = ["seed".to_string()]
        .into_iter()
        .chain(plan.recipe.experts.iter().map(|e| format!("experts/{}", e.name)))
        .chain(plan.recipe.merges.iter().map(|m| format!("finetune/{}", m.name)))
        .chain(["dense".to_string()]);
    for stage in stages {
        if let Ok(m) = crate::train::metrics::read_metrics(&plan.out.join(&stage).join("metrics.jsonl")) {
            let points: Vec<(f64, f64)> = m.iter().filter_map(|v| Some((v.get("step")?.as_f64()?, v.get("loss")?.as_f64()?))).collect();
            if !points.is_empty() {
                curves.push((stage, points));
            }
        }
    }
    if curves.is_empty() {
        return Ok(());
    }
    write_atomic(&plan.out.join("loss_curves.png"), &plot_curves(&curves).to_png())?;
    writeln!(md, "\n## Training loss\n\n![loss curves](loss_curves.png)\n")?;
    let legend: Vec<String> = curves.iter().enumerate().map(|(i, (s, _))| format!("{} = {}", PALETTE[i % PALETTE.len()].0, s)).collect();
    writeln!(md, "Each curve is one stage's training loss (moving average of 10 steps) against its own steps (x scaled to the longest stage; y from the lowest to the highest loss shown). Colours: {}.", legend.join(", "))?;
    Ok(())
}

/// Routing heatmaps: domain x expert per layer, one PNG per routed model.
fn write_routing(md: &mut String, plan: &Plan<'_>, rows: &[Row]) -> Result<()> {
    let routed: Vec<&Row> = rows.iter().filter(|r| !r.routing().is_empty()).collect();
    if routed.is_empty() {
        return Ok(());
    }
    writeln!(md, "\n## Routing\n")?;
    for r in routed {
        let routing = r.routing();
        let file = format!("routing_{}.png", slug(&r.entry.label));
        write_atomic(&plan.out.join(&file), &plot_heatmap(&routing).to_png())?;
        writeln!(md, "**{}**: ![routing {}]({file})\n", r.entry.label, r.entry.label)?;
        let what = if r.entry.label.contains("ensemble") { "ensemble (the cached prior over experts)" } else { "MoE layer" };
        let domains: Vec<&str> = routing.iter().map(|(d, _)| *d).collect();
        writeln!(md, "One panel per {what} ({} of them, left to right); in each, a row per domain ({}, top to bottom) and a column per expert; darker = larger share of that domain's token assignments (the darkest cell is the largest share in the figure).\n", routing[0].1.len(), domains.join(", "))?;
        for (d, layers) in &routing {
            let shares: Vec<String> = layers.iter().map(|l| format!("[{}]", l.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" "))).collect();
            writeln!(md, "- {d}: {}", shares.join(" "))?;
        }
        writeln!(md)?;
    }
    Ok(())
}

fn write_json(plan: &Plan<'_>, rows: &[Row], stages: &[Manifest]) -> Result<()> {
    let models: Vec<Value> = rows
        .iter()
        .map(|r| json!({
            "model": r.entry.label, "kind": r.entry.kind.name(), "tokens": r.tokens, "train_flops": r.flops,
            "domains": r.eval.domains.iter().map(|d| json!({"domain": d.domain, "loss": d.loss, "perplexity": d.perplexity})).collect::<Vec<_>>(),
            "mean_loss": r.mean_loss(), "accuracy": r.eval.accuracy, "routing": r.routing(),
        }))
        .collect();
    let stages: Vec<Value> = stages
        .iter()
        .map(|m| json!({"stage": m.stage, "tokens": m.tokens, "train_flops": m.train_flops, "wall_time_s": m.wall_time_s, "device": m.device}))
        .collect();
    write_atomic(&plan.out.join("report.json"), serde_json::to_string_pretty(&json!({ "models": models, "stages": stages }))?.as_bytes())
}

fn collect_manifests(dir: &std::path::Path, out: &mut Vec<Manifest>) {
    if !dir.is_dir() {
        return;
    }
    if let Some(m) = std::fs::read_to_string(dir.join(super::stage::MANIFEST_FILE)).ok().and_then(|t| serde_json::from_str(&t).ok()) {
        out.push(m);
        return;
    }
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() && !e.file_name().to_string_lossy().starts_with("checkpoints") {
            collect_manifests(&e.path(), out);
        }
    }
}

fn plot_curves(curves: &[(String, Vec<(f64, f64)>)]) -> Canvas {
    let (w, h, pad) = (900usize, 500usize, 30i64);
    let mut c = Canvas::new(w, h, [255, 255, 255]);
    let smooth = |p: &[(f64, f64)]| -> Vec<(f64, f64)> {
        (0..p.len()).map(|i| {
            let lo = i.saturating_sub(9);
            (p[i].0, p[lo..=i].iter().map(|x| x.1).sum::<f64>() / (i - lo + 1) as f64)
        }).collect()
    };
    let smoothed: Vec<Vec<(f64, f64)>> = curves.iter().map(|(_, p)| smooth(p)).collect();
    let max_x = smoothed.iter().flatten().map(|p| p.0).fold(1.0, f64::max);
    let (min_y, max_y) = smoothed.iter().flatten().fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let span = (max_y - min_y).max(1e-9);
    // Axes.
    c.line((pad, h as i64 - pad), (w as i64 - pad, h as i64 - pad), [0, 0, 0]);
    c.line((pad, pad), (pad, h as i64 - pad), [0, 0, 0]);
    for (i, points) in smoothed.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()].1;
        let to_px = |(x, y): (f64, f64)| {
            (pad + ((x / max_x) * (w as f64 - 2.0 * pad as f64)) as i64, h as i64 - pad - (((y - min_y) / span) * (h as f64 - 2.0 * pad as f64)) as i64)
        };
        for pair in points.windows(2) {
            c.line(to_px(pair[0]), to_px(pair[1]), color);
        }
    }
    c
}

fn plot_heatmap(routing: &[(&str, &Vec<Vec<f64>>)]) -> Canvas {
    let domains = routing.len();
    let layers = routing[0].1.len();
    let experts = routing[0].1.first().map_or(1, |l| l.len());
    let (cell, gap) = (28i64, 20i64);
    let panel_w = experts as i64 * cell;
    let w = (layers as i64 * (panel_w + gap) + gap) as usize;
    let h = (domains as i64 * cell + 2 * gap) as usize;
    let mut c = Canvas::new(w, h, [255, 255, 255]);
    // Darkest = the largest share in the figure (with top-k routing no share exceeds 1/k).
    let max = routing.iter().flat_map(|(_, l)| l.iter().flatten()).cloned().fold(1e-9, f64::max);
    for (d, (_, per_layer)) in routing.iter().enumerate() {
        for (l, shares) in per_layer.iter().enumerate() {
            for (e, &s) in shares.iter().enumerate() {
                let v = (s / max).clamp(0.0, 1.0);
                let color = [(255.0 * (1.0 - v)) as u8, (255.0 * (1.0 - 0.75 * v)) as u8, 255];
                let x = gap + l as i64 * (panel_w + gap) + e as i64 * cell;
                c.fill_rect(x, gap + d as i64 * cell, cell - 2, cell - 2, color);
            }
        }
    }
    c
}
