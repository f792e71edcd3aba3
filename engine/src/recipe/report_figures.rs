//! The report's figures: training loss per stage, the pipeline against cumulative compute,
//! the final models against compute, and routing heatmaps, each a PNG recorded in
//! report.json.

use std::fmt::Write as _;

use anyhow::Result;

use super::config::Merge;
use super::entries::EntryKind;
use super::plan::{Plan, slug};
use super::plots::{self, Chart, Heatmap, Series};
use super::report::Row;
use super::report_inputs::ReportInputs;
use super::report_record::FigureRecord;
use super::stage_id::StageId;
use crate::fsutil::write_atomic;

/// A training stage's loss curve: (tokens seen, smoothed loss) per logged step.
fn loss_curve(inputs: &ReportInputs, stage: &StageId) -> Option<Vec<(f64, f64, f64)>> {
    let steps = inputs.steps(stage)?;
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
fn training_stages(plan: &Plan<'_>) -> Vec<StageId> {
    [StageId::Seed]
        .into_iter()
        .chain(plan.recipe.all_experts().into_iter().map(|e| StageId::Expert(e.name)))
        .chain(plan.recipe.merges.iter().map(|m| StageId::Finetune(m.name.clone())))
        .chain([StageId::Dense, StageId::DenseData])
        .collect()
}

/// The figures a report drew, recorded in report.json (file, size, the texts on it).
pub(super) type Figures = Vec<FigureRecord>;

pub(super) fn save_png(plan: &Plan<'_>, file: &str, figure: Result<plots::Figure>, figures: &mut Figures) -> Result<()> {
    let figure = figure?;
    write_atomic(&plan.out.join(file), &figure.png)?;
    figures.push(FigureRecord { file: file.to_string(), height: figure.height, texts: figure.texts, width: figure.width });
    Ok(())
}

/// Training loss of every stage against its own steps.
pub(super) fn write_loss_curves(md: &mut String, plan: &Plan<'_>, inputs: &ReportInputs, figures: &mut Figures) -> Result<()> {
    let series: Vec<Series> = training_stages(plan)
        .into_iter()
        .filter_map(|stage| {
            let points = loss_curve(inputs, &stage)?.into_iter().map(|(step, _, loss)| (step, loss)).collect();
            Some(Series { label: stage.to_string(), points, markers: false, point_labels: vec![] })
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
pub(super) fn write_pipeline(md: &mut String, plan: &Plan<'_>, inputs: &ReportInputs, figures: &mut Figures) -> Result<()> {
    let rows = &inputs.rows;
    let flops = |stage: &StageId| inputs.manifest(stage).map_or(0.0, |m| m.train_flops);
    let seed_end = flops(&StageId::Seed);
    // A merge's finetune starts where its own experts (its variant's) ended.
    let experts_end = |merge: &Merge| seed_end + plan.recipe.experts_of(merge).into_iter().map(|e| flops(&StageId::Expert(e.name))).sum::<f64>();
    let mut series = Vec::new();
    for stage in training_stages(plan) {
        let Some(manifest) = inputs.manifest(&stage).filter(|m| m.tokens > 0) else { continue };
        let Some(curve) = loss_curve(inputs, &stage) else { continue };
        let fpt = manifest.train_flops / manifest.tokens as f64;
        let after_experts = |name: &str| plan.recipe.merges.iter().find(|m| m.name == name && m.method.mixes_experts());
        let offset = match &stage {
            StageId::Seed => 0.0,
            StageId::Finetune(name) => after_experts(name).map_or(seed_end, experts_end),
            _ => seed_end,
        };
        let points = curve.into_iter().map(|(_, tokens, loss)| (offset + tokens * fpt, loss)).collect();
        series.push(Series { label: stage.to_string(), points, markers: false, point_labels: vec![] });
    }
    if series.is_empty() {
        return Ok(());
    }
    let evaluated: Vec<&Row> = rows.iter().filter(|r| !matches!(r.entry.kind, EntryKind::Expert | EntryKind::Diagnosis)).collect();
    series.push(Series {
        label: "validation loss (mean of the domains)".into(),
        points: evaluated.iter().map(|r| (r.flops, r.mean_loss())).collect(),
        markers: true,
        point_labels: evaluated.iter().map(|r| r.entry.label()).collect(),
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
pub(super) fn write_summary(md: &mut String, plan: &Plan<'_>, rows: &[Row], figures: &mut Figures) -> Result<()> {
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
                let point_labels = if labelled { vec![r.entry.label()] } else { vec![] };
                Series { label: r.entry.label(), points: vec![(r.flops, value(r))], markers: true, point_labels }
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
pub(super) fn write_routing(md: &mut String, plan: &Plan<'_>, rows: &[Row], figures: &mut Figures) -> Result<()> {
    let routed: Vec<&Row> = rows.iter().filter(|r| !r.routing().is_empty()).collect();
    if routed.is_empty() {
        return Ok(());
    }
    writeln!(md, "\n## Routing\n")?;
    for r in routed {
        let routing = r.routing();
        let ensemble = r.routes_by_prior();
        let width = routing[0].1[0].len();
        let columns = if r.entry.experts.len() == width { r.entry.experts.clone() } else { (0..width).map(|e| format!("expert {e}")).collect() };
        let map = Heatmap {
            title: format!("{}: share of each domain's tokens routed to each expert", r.entry.label()),
            rows: routing.iter().map(|(d, _)| d.to_string()).collect(),
            columns,
            panels: (0..routing[0].1.len()).map(|l| routing.iter().map(|(_, layers)| layers[l].clone()).collect()).collect(),
            panel_label: if ensemble { "cached prior".into() } else { "layer".into() },
            cell_text: vec![],
            scale_label: "share".into(),
        };
        let file = format!("routing_{}.png", slug(&r.entry.label()));
        save_png(plan, &file, plots::heatmap(&map), figures)?;
        writeln!(md, "**{}**\n\n![routing of {}]({file})\n", r.entry.label(), r.entry.label())?;
    }
    Ok(())
}

