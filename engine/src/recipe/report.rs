//! The recipe's report: per-domain validation perplexity (and arithmetic exact match) of the
//! seed, each expert, each merge before and after finetuning and the baselines, with the
//! tokens and training FLOPs behind each; loss curves and routing heatmaps as PNG.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::png::{Canvas, PALETTE};
use super::runner::{Entry, Plan, slug};
use super::stage::{Manifest, Stage};
use crate::fsutil::write_atomic;

struct Row {
    entry: Entry,
    /// domain -> (loss, perplexity)
    domains: Vec<(String, f64, f64)>,
    accuracy: BTreeMap<String, f64>,
    routing: Vec<(String, Vec<Vec<f64>>)>,
    tokens: u64,
    flops: f64,
}

fn read_manifest(plan: &Plan<'_>, stage: &str) -> Option<Manifest> {
    let text = std::fs::read_to_string(plan.out.join(stage).join(super::stage::MANIFEST_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn write_report(plan: &Plan<'_>, entries: &[(Entry, Stage)]) -> Result<()> {
    let mut rows = Vec::new();
    for (entry, stage) in entries {
        let path = stage.dir.join("eval.json");
        let eval: Value = serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?)?;
        let domains = eval["domains"].as_array().cloned().unwrap_or_default();
        let (mut tokens, mut flops) = (0, 0.0);
        for s in &entry.lineage {
            if let Some(m) = read_manifest(plan, s) {
                tokens += m.tokens;
                flops += m.train_flops;
            }
        }
        rows.push(Row {
            entry: entry.clone(),
            domains: domains
                .iter()
                .map(|d| (d["domain"].as_str().unwrap_or("?").to_string(), d["loss"].as_f64().unwrap_or(f64::NAN), d["perplexity"].as_f64().unwrap_or(f64::NAN)))
                .collect(),
            accuracy: eval["accuracy"].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0))).collect()).unwrap_or_default(),
            routing: if entry.kind == "final" || entry.kind == "merge" {
                domains
                    .iter()
                    .filter_map(|d| {
                        let r: Vec<Vec<f64>> = serde_json::from_value(d["routing"].clone()).ok()?;
                        (!r.is_empty() && (r.len() > 1 || r[0].len() > 1)).then(|| (d["domain"].as_str().unwrap_or("?").to_string(), r))
                    })
                    .collect()
            } else {
                vec![]
            },
            tokens,
            flops,
        });
    }

    let domain_names: Vec<String> = rows.first().map(|r| r.domains.iter().map(|d| d.0.clone()).collect()).unwrap_or_default();
    let mean_loss = |r: &Row| r.domains.iter().map(|d| d.1).sum::<f64>() / r.domains.len().max(1) as f64;
    let finals: Vec<&Row> = rows.iter().filter(|r| r.entry.kind == "final").collect();

    let mut stages = Vec::new();
    for entry in std::fs::read_dir(&plan.out)?.flatten() {
        collect_manifests(&entry.path(), &mut stages);
    }
    stages.sort_by(|a, b| a.stage.cmp(&b.stage));
    let mut devices: Vec<&str> = stages.iter().filter(|m| m.tokens > 0).map(|m| m.device.as_str()).collect();
    devices.sort();
    devices.dedup();

    let mut md = String::new();
    let name = plan.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    writeln!(md, "# Recipe report: {name}\n")?;
    writeln!(md, "Validation perplexity per domain (lower is better), mean = exp(mean of the domains' losses). Tokens and training FLOPs (6 x active parameters x tokens, plus attention) count every stage that produced the model, the seed's included. Trained on: {}.\n", devices.join(", "))?;
    write!(md, "| model | tokens | train FLOPs |")?;
    for d in &domain_names {
        write!(md, " {d} |")?;
    }
    writeln!(md, " mean | arithmetic exact match |")?;
    writeln!(md, "|---|---:|---:|{}---:|---:|", "---:|".repeat(domain_names.len()))?;
    for r in &rows {
        let best = |i: usize| r.entry.kind == "final" && finals.iter().all(|f| f.domains[i].1 >= r.domains[i].1);
        write!(md, "| {} | {:.2}M | {:.3e} |", r.entry.label, r.tokens as f64 / 1e6, r.flops)?;
        for (i, d) in r.domains.iter().enumerate() {
            if best(i) { write!(md, " **{:.2}** |", d.2)? } else { write!(md, " {:.2} |", d.2)? }
        }
        let acc: Vec<String> = r.accuracy.values().map(|a| format!("{:.0}%", a * 100.0)).collect();
        let mean_best = r.entry.kind == "final" && finals.iter().all(|f| mean_loss(f) >= mean_loss(r));
        let mean = mean_loss(r).exp();
        if mean_best { write!(md, " **{mean:.2}** |")? } else { write!(md, " {mean:.2} |")? }
        writeln!(md, " {} |", if acc.is_empty() { "-".into() } else { acc.join(", ") })?;
    }
    if !finals.is_empty() {
        writeln!(md, "\nBold: the best of the final models (finetuned merges, averages, ensembles, dense baseline).\n")?;
        for (i, d) in domain_names.iter().enumerate() {
            let w = finals.iter().min_by(|a, b| a.domains[i].1.total_cmp(&b.domains[i].1)).unwrap();
            writeln!(md, "- {d}: **{}** wins (perplexity {:.2})", w.entry.label, w.domains[i].2)?;
        }
        let w = finals.iter().min_by(|a, b| mean_loss(a).total_cmp(&mean_loss(b))).unwrap();
        writeln!(md, "- on average: **{}** wins (mean perplexity {:.2})", w.entry.label, mean_loss(w).exp())?;
        let spread: Vec<String> = finals.iter().map(|f| format!("{} {:.2e}", f.entry.label, f.flops)).collect();
        writeln!(md, "\nTraining FLOPs of the final models: {}.", spread.join(", "))?;
    }

    // Loss curves of every training stage.
    let mut curves = Vec::new();
    for stage in ["seed".to_string()]
        .into_iter()
        .chain(plan.recipe.experts.iter().map(|e| format!("experts/{}", e.name)))
        .chain(plan.recipe.merges.iter().map(|m| format!("finetune/{}", m.name)))
        .chain(["dense".to_string()])
    {
        if let Ok(m) = crate::train::metrics::read_metrics(&plan.out.join(&stage).join("metrics.jsonl")) {
            let points: Vec<(f64, f64)> = m.iter().filter_map(|v| Some((v.get("step")?.as_f64()?, v.get("loss")?.as_f64()?))).collect();
            if !points.is_empty() {
                curves.push((stage, points));
            }
        }
    }
    if !curves.is_empty() {
        write_atomic(&plan.out.join("loss_curves.png"), &plot_curves(&curves).to_png())?;
        writeln!(md, "\n## Training loss\n\n![loss curves](loss_curves.png)\n")?;
        let legend: Vec<String> = curves.iter().enumerate().map(|(i, (s, _))| format!("{} = {}", PALETTE[i % PALETTE.len()].0, s)).collect();
        writeln!(md, "Each curve is one stage's training loss (moving average of 10 steps) against its own steps (x scaled to the longest stage; y from the lowest to the highest loss shown). Colours: {}.", legend.join(", "))?;
    }

    // Routing heatmaps: domain x expert per layer.
    let routed: Vec<&Row> = rows.iter().filter(|r| !r.routing.is_empty()).collect();
    if !routed.is_empty() {
        writeln!(md, "\n## Routing\n")?;
        for r in routed {
            let file = format!("routing_{}.png", slug(&r.entry.label));
            write_atomic(&plan.out.join(&file), &plot_heatmap(&r.routing).to_png())?;
            writeln!(md, "**{}**: ![routing {}]({file})\n", r.entry.label, r.entry.label)?;
            let first = &r.routing[0].1;
            writeln!(md, "One panel per {} ({} of them, left to right); in each, a row per domain ({}, top to bottom) and a column per expert; darker = larger share of that domain's token assignments (the darkest cell is the largest share in the figure).\n",
                if r.entry.label.contains("ensemble") { "ensemble (the cached prior over experts)" } else { "MoE layer" },
                first.len(),
                r.routing.iter().map(|(d, _)| d.as_str()).collect::<Vec<_>>().join(", "))?;
            for (d, layers) in &r.routing {
                let shares: Vec<String> = layers.iter().map(|l| format!("[{}]", l.iter().map(|x| format!("{:.2}", x)).collect::<Vec<_>>().join(" "))).collect();
                writeln!(md, "- {d}: {}", shares.join(" "))?;
            }
            writeln!(md)?;
        }
    }

    // Stages.
    writeln!(md, "\n## Stages\n\n| stage | tokens | train FLOPs | wall time | device |\n|---|---:|---:|---:|---|")?;
    for m in &stages {
        writeln!(md, "| {} | {} | {:.3e} | {:.1} s | {} |", m.stage, m.tokens, m.train_flops, m.wall_time_s, m.device)?;
    }

    let json_rows: Vec<Value> = rows
        .iter()
        .map(|r| json!({
            "model": r.entry.label, "kind": r.entry.kind, "tokens": r.tokens, "train_flops": r.flops,
            "domains": r.domains.iter().map(|(d, l, p)| json!({"domain": d, "loss": l, "perplexity": p})).collect::<Vec<_>>(),
            "mean_loss": mean_loss(r), "accuracy": r.accuracy, "routing": r.routing,
        }))
        .collect();
    write_atomic(&plan.out.join("report.json"), serde_json::to_string_pretty(&json!({ "models": json_rows, "stages": stages.iter().map(|m| json!({"stage": m.stage, "tokens": m.tokens, "train_flops": m.train_flops, "wall_time_s": m.wall_time_s, "device": m.device})).collect::<Vec<_>>() }))?.as_bytes())?;
    write_atomic(&plan.out.join("report.md"), md.as_bytes())?;
    eprintln!("report: {}", plan.out.join("report.md").display());
    Ok(())
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

fn plot_heatmap(routing: &[(String, Vec<Vec<f64>>)]) -> Canvas {
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
