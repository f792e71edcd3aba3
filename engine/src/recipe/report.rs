//! The recipe's report: per-domain validation perplexity (and arithmetic exact match) of the
//! seed, each expert, each merge before and after finetuning and the baselines, with the
//! tokens and training FLOPs behind each; loss curves and routing heatmaps as PNG.

use std::fmt::Write as _;

use anyhow::Result;

use super::entries::{Entry, EntryKind};
use super::plan::{Plan, slug};
use super::plots::{self, Chart, Heatmap, Series};
use super::stage::{Manifest, Stage};
use crate::eval::EvalReport;
use super::report_record::{DomainRecord, FigureRecord, ModelRecord, ReportRecord, StageRecord};
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
    write_table(&mut md, &rows, &stages, plan.recipe.seed)?;
    write_baselines(&mut md, plan)?;
    write_diagnosis(&mut md, plan, &rows)?;
    write_drops(&mut md, plan, &rows)?;
    write_winners(&mut md, &rows)?;
    let mut figures = Figures::new();
    write_summary(&mut md, plan, &rows, &mut figures)?;
    write_pipeline(&mut md, plan, &rows, &mut figures)?;
    write_loss_curves(&mut md, plan, &mut figures)?;
    write_routing(&mut md, plan, &rows, &mut figures)?;
    writeln!(md, "\n## Stages\n\n| stage | tokens | train FLOPs | wall time | device |\n|---|---:|---:|---:|---|")?;
    for m in &stages {
        writeln!(md, "| {} | {} | {:.3e} | {:.1} s | {} |", m.stage, m.tokens, m.train_flops, m.wall_time_s, m.device)?;
    }
    write_json(plan, &rows, &stages, &figures)?;
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
        writeln!(md, "| {} | {:.2}M | {:.3e} | {} | {mean} | {acc} |", r.entry.label, r.tokens as f64 / 1e6, r.flops, cells.join(" | "))?;
    }
    Ok(())
}

/// Models whose routing dropped tokens for capacity (Switch): the dropped share of
/// token-expert assignments at evaluation (mean over domains) and in finetuning (mean over
/// steps), beside the mean perplexity. Omitted when nothing was dropped.
fn write_drops(md: &mut String, plan: &Plan<'_>, rows: &[Row]) -> Result<()> {
    let training_drops = |r: &Row| -> Option<f64> {
        let stage = r.entry.lineage.last().filter(|s| s.starts_with("finetune/"))?;
        let steps = crate::train::metrics::read_steps(&plan.out.join(stage).join("metrics.jsonl")).ok()?;
        let drops: Vec<f64> = steps.iter().filter_map(|s| s.dropped).collect();
        (!drops.is_empty()).then(|| drops.iter().sum::<f64>() / drops.len() as f64)
    };
    let dropping: Vec<(&Row, f64, Option<f64>)> = rows
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
        writeln!(md, "| {} | {:.2} | {:.1}% | {train} |", r.entry.label, r.mean_loss().exp(), eval * 100.0)?;
    }
    Ok(())
}

/// The BTX merge diagnosis: how far each member's shared (non-FFN) weights drifted from the
/// seed and from their average, and each member's perplexity on its own domain alone, then
/// with its FFN inside the averaged shared weights (what MiX builds), then through the MoE.
fn write_diagnosis(md: &mut String, plan: &Plan<'_>, rows: &[Row]) -> Result<()> {
    let r = plan.recipe;
    let Some(btx) = r.merges.iter().find(|m| m.method == super::config::MergeMethod::Btx).filter(|_| r.diagnose_merge) else {
        return Ok(());
    };
    let (seed, _) = plan.seed()?;
    let members = plan.btx_members(&seed);
    let inputs = members.iter().map(|(_, p)| crate::merge::MergeInput::load(p)).collect::<Result<Vec<_>>>()?;
    let seed_input = crate::merge::MergeInput::load(&seed)?;
    let drifts = crate::merge::diagnosis::drift(&inputs.iter().collect::<Vec<_>>(), &seed_input, None)?;
    let row = |label: &str| rows.iter().find(|r| r.entry.label == label);
    // Perplexity on a member's own domain (its largest data weight), or the mean for the seed.
    let own = |name: &str| r.experts.iter().find(|e| e.name == name).and_then(|e| e.data.iter().max_by(|a, b| a.1.total_cmp(&b.1))).map(|d| d.0.clone());
    let ppl = |row: Option<&Row>, domain: &Option<String>| -> String {
        let Some(row) = row else { return "-".into() };
        match domain {
            Some(d) => row.eval.domains.iter().find(|x| &x.domain == d).map_or("-".into(), |x| format!("{:.2}", x.perplexity)),
            None => format!("{:.2}", row.mean_loss().exp()),
        }
    };
    writeln!(md, "\n## Merge diagnosis\n")?;
    writeln!(md, "Shared weights = every non-FFN tensor (attention, norms, embeddings), which MiX averages. Drift from seed = ||member - seed|| / ||seed||, drift from average = ||member - average|| / ||member||, over all of them. Perplexity on the member's own domain (the seed: mean over domains): the member alone, its FFN inside the averaged shared weights (the MoE when every token goes to it), and the BTX model `{}` before and after its finetune.\n", btx.name)?;
    writeln!(md, "| member | domain | drift from seed | drift from average | alone | in averaged shared weights | BTX before finetune | BTX |\n|---|---|---:|---:|---:|---:|---:|---:|")?;
    for ((name, _), d) in members.iter().zip(&drifts) {
        let domain = own(name);
        let alone = if name == "generalist" { row("seed") } else { row(&format!("expert {name}")) };
        writeln!(
            md,
            "| {name} | {} | {:.3} | {:.3} | {} | {} | {} | {} |",
            domain.as_deref().unwrap_or("mean"),
            d.from_seed,
            d.from_average,
            ppl(alone, &domain),
            ppl(row(&format!("{name} in averaged shared weights")), &domain),
            ppl(row(&format!("{} (before finetune)", btx.name)), &domain),
            ppl(row(&btx.name), &domain),
        )?;
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
        writeln!(md, "- {}: **{}** wins (perplexity {:.2})", d.domain, w.entry.label, w.eval.domains[i].perplexity)?;
    }
    let w = finals.iter().min_by(|a, b| a.mean_loss().total_cmp(&b.mean_loss())).expect("two finals");
    writeln!(md, "- on average: **{}** wins (mean perplexity {:.2})", w.entry.label, w.mean_loss().exp())?;
    let spread: Vec<String> = finals.iter().map(|f| format!("{} {:.2e}", f.entry.label, f.flops)).collect();
    writeln!(md, "\nTraining FLOPs of the final models: {}.", spread.join(", "))?;
    Ok(())
}

/// A training stage's loss curve: (tokens seen, smoothed loss) per logged step.
fn loss_curve(plan: &Plan<'_>, stage: &str) -> Option<Vec<(f64, f64, f64)>> {
    let steps = crate::train::metrics::read_steps(&plan.out.join(stage).join("metrics.jsonl")).ok()?;
    let raw: Vec<(f64, f64, f64)> = steps.iter().map(|s| (s.step as f64, s.tokens as f64, s.loss)).collect();
    // A moving average of 10 steps.
    let smoothed = (0..raw.len())
        .map(|i| {
            let lo = i.saturating_sub(9);
            (raw[i].0, raw[i].1, raw[lo..=i].iter().map(|x| x.2).sum::<f64>() / (i - lo + 1) as f64)
        })
        .collect::<Vec<_>>();
    (!smoothed.is_empty()).then_some(smoothed)
}

/// The training stages in pipeline order.
fn training_stages(plan: &Plan<'_>) -> Vec<String> {
    ["seed".to_string()]
        .into_iter()
        .chain(plan.recipe.experts.iter().map(|e| format!("experts/{}", e.name)))
        .chain(plan.recipe.merges.iter().map(|m| format!("finetune/{}", m.name)))
        .chain(["dense".to_string(), "dense-data".to_string()])
        .collect()
}

/// The figures a report drew, recorded in report.json (file, size, the texts on it).
type Figures = Vec<FigureRecord>;

fn save_png(plan: &Plan<'_>, file: &str, figure: Result<plots::Figure>, figures: &mut Figures) -> Result<()> {
    let figure = figure?;
    write_atomic(&plan.out.join(file), &figure.png)?;
    figures.push(FigureRecord { file: file.to_string(), height: figure.height, texts: figure.texts, width: figure.width });
    Ok(())
}

/// Training loss of every stage against its own steps.
fn write_loss_curves(md: &mut String, plan: &Plan<'_>, figures: &mut Figures) -> Result<()> {
    let series: Vec<Series> = training_stages(plan)
        .into_iter()
        .filter_map(|stage| {
            let points = loss_curve(plan, &stage)?.into_iter().map(|(step, _, loss)| (step, loss)).collect();
            Some(Series { label: stage, points, markers: false, point_labels: vec![] })
        })
        .collect();
    if series.is_empty() {
        return Ok(());
    }
    let chart = Chart {
        title: "Training loss of each stage".into(),
        x_label: "optimizer step of the stage".into(),
        y_label: "training loss (nats, mean of 10 steps)".into(),
        series,
    };
    save_png(plan, "loss_curves.png", plots::line_chart(&chart, 960, 540), figures)?;
    writeln!(md, "\n## Training loss\n\n![training loss of each stage](loss_curves.png)\n")?;
    Ok(())
}

/// The pipeline as one picture: training loss against cumulative training FLOPs, each
/// expert (and baseline) starting where the seed ended and the finetune where the experts
/// ended, with each evaluated model's mean validation loss at its FLOPs.
fn write_pipeline(md: &mut String, plan: &Plan<'_>, rows: &[Row], figures: &mut Figures) -> Result<()> {
    let flops = |stage: &str| read_manifest(plan, stage).map_or(0.0, |m| m.train_flops);
    let seed_end = flops("seed");
    let experts_end = seed_end + plan.recipe.experts.iter().map(|e| flops(&format!("experts/{}", e.name))).sum::<f64>();
    let mut series = Vec::new();
    for stage in training_stages(plan) {
        let Some(manifest) = read_manifest(plan, &stage).filter(|m| m.tokens > 0) else { continue };
        let Some(curve) = loss_curve(plan, &stage) else { continue };
        let fpt = manifest.train_flops / manifest.tokens as f64;
        let finetune_after_experts = stage.strip_prefix("finetune/").and_then(|n| plan.recipe.merges.iter().find(|m| m.name == n)).is_some_and(|m| m.method.mixes_experts());
        let offset = match stage.as_str() {
            "seed" => 0.0,
            _ if finetune_after_experts => experts_end,
            _ => seed_end,
        };
        let points = curve.into_iter().map(|(_, tokens, loss)| (offset + tokens * fpt, loss)).collect();
        series.push(Series { label: stage, points, markers: false, point_labels: vec![] });
    }
    if series.is_empty() {
        return Ok(());
    }
    let evaluated: Vec<&Row> = rows.iter().filter(|r| !matches!(r.entry.kind, EntryKind::Expert | EntryKind::Diagnosis)).collect();
    series.push(Series {
        label: "validation loss (mean of the domains)".into(),
        points: evaluated.iter().map(|r| (r.flops, r.mean_loss())).collect(),
        markers: true,
        point_labels: evaluated.iter().map(|r| r.entry.label.clone()).collect(),
    });
    let chart = Chart {
        title: "The pipeline: loss against cumulative training compute".into(),
        x_label: "cumulative training FLOPs (seed, then each branch)".into(),
        y_label: "loss (nats)".into(),
        series,
    };
    save_png(plan, "pipeline.png", plots::line_chart(&chart, 1100, 600), figures)?;
    writeln!(md, "\n## The pipeline\n\n![training loss against cumulative training FLOPs](pipeline.png)\n")?;
    Ok(())
}

/// Comparison recipes: mean validation perplexity against training FLOPs, one point per
/// final model, and the same per domain as small multiples.
fn write_summary(md: &mut String, plan: &Plan<'_>, rows: &[Row], figures: &mut Figures) -> Result<()> {
    let finals: Vec<&Row> = rows.iter().filter(|r| r.entry.kind == EntryKind::Final).collect();
    if finals.len() < 2 {
        return Ok(());
    }
    let chart = |title: String, value: &dyn Fn(&Row) -> f64, labelled: bool| Chart {
        title,
        x_label: "training FLOPs".into(),
        y_label: "validation perplexity".into(),
        series: finals
            .iter()
            .map(|r| {
                let point_labels = if labelled { vec![r.entry.label.clone()] } else { vec![] };
                Series { label: r.entry.label.clone(), points: vec![(r.flops, value(r))], markers: true, point_labels }
            })
            .collect(),
    };
    let main = chart("Final models: mean validation perplexity against training compute".into(), &|r: &Row| r.mean_loss().exp(), true);
    let panels: Vec<Chart> = finals[0]
        .eval
        .domains
        .iter()
        .enumerate()
        .map(|(i, d)| chart(d.domain.clone(), &|r: &Row| r.eval.domains[i].perplexity, false))
        .collect();
    save_png(plan, "summary.png", plots::chart_with_panels(&main, &panels, 3, 1200), figures)?;
    writeln!(md, "\n## Summary\n\n![mean and per-domain validation perplexity against training FLOPs](summary.png)\n")?;
    Ok(())
}

/// Routing heatmaps: domains x experts (by recipe name), one panel per MoE layer.
fn write_routing(md: &mut String, plan: &Plan<'_>, rows: &[Row], figures: &mut Figures) -> Result<()> {
    let routed: Vec<&Row> = rows.iter().filter(|r| !r.routing().is_empty()).collect();
    if routed.is_empty() {
        return Ok(());
    }
    writeln!(md, "\n## Routing\n")?;
    for r in routed {
        let routing = r.routing();
        let ensemble = r.eval.checkpoint.is_none() && !r.eval.experts.is_empty();
        let width = routing[0].1[0].len();
        let columns = if r.entry.experts.len() == width { r.entry.experts.clone() } else { (0..width).map(|e| format!("expert {e}")).collect() };
        let map = Heatmap {
            title: format!("{}: share of each domain's tokens routed to each expert", r.entry.label),
            rows: routing.iter().map(|(d, _)| d.to_string()).collect(),
            columns,
            panels: (0..routing[0].1.len()).map(|l| routing.iter().map(|(_, layers)| layers[l].clone()).collect()).collect(),
            panel_label: if ensemble { "cached prior".into() } else { "layer".into() },
            cell_text: vec![],
            scale_label: "share".into(),
        };
        let file = format!("routing_{}.png", slug(&r.entry.label));
        save_png(plan, &file, plots::heatmap(&map), figures)?;
        writeln!(md, "**{}**\n\n![routing of {}]({file})\n", r.entry.label, r.entry.label)?;
    }
    Ok(())
}

fn write_json(plan: &Plan<'_>, rows: &[Row], stages: &[Manifest], figures: &Figures) -> Result<()> {
    let models = rows
        .iter()
        .map(|r| ModelRecord {
            accuracy: r.eval.accuracy.clone(),
            domains: r.eval.domains.iter().map(|d| DomainRecord { domain: d.domain.clone(), loss: d.loss, perplexity: d.perplexity }).collect(),
            kind: r.entry.kind,
            mean_loss: r.mean_loss(),
            model: r.entry.label.clone(),
            routing: r.routing().into_iter().map(|(d, shares)| (d.to_string(), shares.clone())).collect(),
            tokens: r.tokens,
            train_flops: r.flops,
        })
        .collect();
    let stages = stages
        .iter()
        .map(|m| StageRecord { device: m.device.clone(), stage: m.stage.clone(), tokens: m.tokens, train_flops: m.train_flops, wall_time_s: m.wall_time_s })
        .collect();
    ReportRecord { figures: figures.clone(), models, stages }.write(&plan.out)
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
