//! A sweep over the two quantities that decide whether BTX pays off: how long the seed
//! trains, and how long each expert trains after branching. Every point is the base recipe
//! with those two numbers changed, run whole (stages shared between points are not: each
//! point is its own run folder); the result is the gap between BTX and each baseline in mean
//! validation log-perplexity (negative: BTX better).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use super::report_record::{ModelRecord, ReportRecord};

use super::config::{MergeMethod, Recipe, SeedModel};
use super::entries::ModelId;
use super::plots::{self, Heatmap};
use super::runner::{RunOptions, run_recipe};
use crate::fsutil::write_atomic;

/// `recipe` with the seed trained `seed_steps` and every expert `expert_steps`.
pub fn variant(recipe: &Recipe, seed_steps: usize, expert_steps: usize) -> Result<Recipe> {
    let SeedModel::Train { mixture, .. } = &recipe.seed_model else {
        bail!("a sweep varies the seed's training: the recipe's `seed_model` must be Train(...)");
    };
    let mut r = recipe.clone();
    r.seed_model = SeedModel::Train { steps: seed_steps, mixture: mixture.clone() };
    r.experts.iter_mut().for_each(|e| e.steps = expert_steps);
    Ok(r)
}

/// Runs every (seed steps, expert steps) point into `out/seed-S-experts-E`, then writes
/// `out/sweep.md` and one heatmap per baseline (`out/sweep_vs_BASELINE.png`).
pub fn sweep(recipe: &Recipe, seed_steps: &[usize], expert_steps: &[usize], options: &RunOptions) -> Result<()> {
    let btx = recipe.merges.iter().find(|m| m.method == MergeMethod::Btx).context("a sweep compares a Btx merge with the baselines; the recipe has none")?;
    let mut baselines: Vec<String> = recipe.merges.iter().filter(|m| matches!(m.method, MergeMethod::Upcycle { .. })).map(|m| ModelId::Merged(m.name.clone()).to_string()).collect();
    baselines.extend(recipe.dense_baseline.then(|| ModelId::Dense.to_string()));
    baselines.extend(recipe.data_matched_baseline.then(|| ModelId::DenseData.to_string()));
    if baselines.is_empty() {
        bail!("a sweep needs a baseline: set `dense_baseline`, `data_matched_baseline` or add an Upcycle merge");
    }
    // [seed][expert] -> the report's mean loss per model.
    let mut grid: Vec<Vec<Vec<ModelRecord>>> = Vec::new();
    for &s in seed_steps {
        let mut row = Vec::new();
        for &e in expert_steps {
            let out: PathBuf = options.out.join(format!("seed-{s}-experts-{e}"));
            eprintln!("sweep point: seed {s} steps, experts {e} steps -> {}", out.display());
            run_recipe(&variant(recipe, s, e)?, &RunOptions { out: out.clone(), ..options.clone() })?;
            row.push(ReportRecord::read(&out)?.models);
        }
        grid.push(row);
    }
    let gap = |models: &[ModelRecord], baseline: &str| -> Option<f64> {
        let loss = |label: &str| models.iter().find(|m| m.model == label).map(|m| m.mean_loss);
        Some(loss(&ModelId::Merged(btx.name.clone()).to_string())? - loss(baseline)?)
    };
    let mut md = format!("# Sweep: {} minus each baseline\n\n", btx.name);
    writeln!(md, "Mean validation log-perplexity of `{}` minus the baseline's (nats; negative: BTX better), for each seed length (rows) and expert length (columns), in training steps. Each point is a whole run in `seed-S-experts-E/`.\n", btx.name)?;
    for baseline in &baselines {
        let values: Vec<Vec<f64>> = grid.iter().map(|row| row.iter().map(|m| gap(m, baseline).unwrap_or(f64::NAN)).collect()).collect();
        writeln!(md, "## vs {baseline}\n\n| seed steps \\\\ expert steps | {} |\n|---|{}", expert_steps.iter().map(|e| e.to_string()).collect::<Vec<_>>().join(" | "), "---:|".repeat(expert_steps.len()))?;
        for (s, row) in seed_steps.iter().zip(&values) {
            writeln!(md, "| {s} | {} |", row.iter().map(|v| format!("{v:+.3}")).collect::<Vec<_>>().join(" | "))?;
        }
        let file = format!("sweep_vs_{}.png", super::plan::slug(baseline));
        let map = Heatmap {
            title: format!("{} minus {baseline}: mean val log-perplexity (nats; < 0: BTX better)", btx.name),
            rows: seed_steps.iter().map(|s| format!("seed {s} steps")).collect(),
            columns: expert_steps.iter().map(|e| e.to_string()).collect(),
            // Shaded by how much better BTX is (0 where it is worse); the values are printed.
            panels: vec![values.iter().map(|r| r.iter().map(|v| (-v).max(0.0)).collect()).collect()],
            panel_label: "expert steps (darker: BTX further ahead)".into(),
            scale_label: "BTX ahead (nats)".into(),
            cell_text: vec![values.iter().map(|r| r.iter().map(|v| format!("{v:+.3}")).collect()).collect()],
        };
        let figure = plots::heatmap(&map)?;
        write_atomic(&options.out.join(&file), &figure.png)?;
        writeln!(md, "\n![{}]({file})\n", map.title)?;
    }
    write_atomic(&options.out.join("sweep.md"), md.as_bytes())?;
    eprintln!("sweep: {}", options.out.join("sweep.md").display());
    Ok(())
}

/// Parses "100,400,1600".
pub fn steps_list(text: &str, flag: &str) -> Result<Vec<usize>> {
    let list: Vec<usize> = text.split(',').map(|s| s.trim().parse::<usize>()).collect::<Result<_, _>>().with_context(|| format!("{flag}: expected step counts like 100,400,1600, found `{text}`"))?;
    if list.is_empty() || list.contains(&0) {
        bail!("{flag}: every step count must be at least 1");
    }
    Ok(list)
}

