//! A sweep over two of the quantities that decide whether BTX pays off: by default how long
//! the seed trains and how long each expert trains after branching; or the experts' learning
//! rate, the finetune's length or learning rate, the routers' learning-rate multiple. Every
//! point is the base recipe with those two numbers changed, run in its own run folder; a seed
//! that neither number changes is trained once, by the first point, and the others start
//! from it. The result is the gap between BTX and each baseline in mean validation
//! log-perplexity (negative: BTX better).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use super::report_record::{ModelRecord, ReportRecord};

use super::config::{MergeMethod, Recipe, SeedModel};
use super::entries::ModelId;
use super::stage_id::StageId;
use super::plots::{self, Heatmap};
use super::runner::{RunOptions, run_recipe};
use crate::fsutil::write_atomic;

/// A quantity a sweep varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    /// The seed's training steps.
    SeedSteps,
    /// Every expert's training steps.
    ExpertSteps,
    /// Every expert's peak learning rate (`expert_optimizer.lr`).
    ExpertLr,
    /// The MoE finetune's steps.
    FinetuneSteps,
    /// The MoE finetune's peak learning rate.
    FinetuneLr,
    /// The routers' learning-rate multiple in the finetune.
    RouterLrMultiplier,
}

impl Quantity {
    const ALL: [Quantity; 6] = [Self::SeedSteps, Self::ExpertSteps, Self::ExpertLr, Self::FinetuneSteps, Self::FinetuneLr, Self::RouterLrMultiplier];

    pub fn name(self) -> &'static str {
        match self {
            Self::SeedSteps => "seed-steps",
            Self::ExpertSteps => "expert-steps",
            Self::ExpertLr => "expert-lr",
            Self::FinetuneSteps => "finetune-steps",
            Self::FinetuneLr => "finetune-lr",
            Self::RouterLrMultiplier => "router-lr-multiplier",
        }
    }

    fn counts_steps(self) -> bool {
        matches!(self, Self::SeedSteps | Self::ExpertSteps | Self::FinetuneSteps)
    }

    /// Its part of a point's folder name (the two step counts as sweeps always named them).
    fn folder_part(self, value: f64) -> String {
        match self {
            Self::SeedSteps => format!("seed-{value}"),
            Self::ExpertSteps => format!("experts-{value}"),
            other => format!("{}-{value}", other.name()),
        }
    }

    /// Sets it to `value` in `recipe`.
    fn apply(self, recipe: &mut Recipe, value: f64) -> Result<()> {
        let steps = value as usize;
        match self {
            Self::SeedSteps => {
                let SeedModel::Train { steps: seed_steps, .. } = &mut recipe.seed_model else {
                    bail!("a sweep over seed-steps varies the seed's training: the recipe's `seed_model` must be Train(...)");
                };
                *seed_steps = steps;
            }
            Self::ExpertSteps => recipe.experts.iter_mut().for_each(|e| e.steps = steps),
            Self::ExpertLr => {
                recipe.expert_optimizer.lr = Some(value);
                recipe.experts.iter_mut().for_each(|e| e.optimizer.lr = None);
            }
            Self::FinetuneSteps => recipe.finetune.steps = steps,
            Self::FinetuneLr => {
                recipe.finetune.lr = None;
                recipe.finetune.optimizer.lr = Some(value);
            }
            Self::RouterLrMultiplier => recipe.finetune.optimizer.router_lr_multiplier = Some(value),
        }
        Ok(())
    }
}

/// One axis of a sweep: a quantity and its values.
#[derive(Debug, Clone, PartialEq)]
pub struct Axis {
    pub quantity: Quantity,
    pub values: Vec<f64>,
}

impl Axis {
    /// Parses `QUANTITY=V1,V2,...` (e.g. `expert-lr=3e-4,1e-3`).
    pub fn parse(text: &str, flag: &str) -> Result<Self> {
        let names: Vec<&str> = Quantity::ALL.iter().map(|q| q.name()).collect();
        let (name, values) = text.split_once('=').with_context(|| format!("{flag}: expected QUANTITY=V1,V2,... (QUANTITY one of {}), found `{text}`", names.join(", ")))?;
        let quantity = *Quantity::ALL.iter().find(|q| q.name() == name.trim()).with_context(|| format!("{flag}: unknown quantity `{name}`; one of {}", names.join(", ")))?;
        Self::of(quantity, values, flag)
    }

    /// `quantity` at the comma-separated `values`.
    pub fn of(quantity: Quantity, values: &str, flag: &str) -> Result<Self> {
        let parsed: Vec<f64> = values.split(',').map(|v| v.trim().parse::<f64>()).collect::<Result<_, _>>().with_context(|| format!("{flag}: expected numbers like 100,400,1600, found `{values}`"))?;
        if parsed.is_empty() || parsed.iter().any(|v| !(v.is_finite() && *v > 0.0)) {
            bail!("{flag}: every value must be a number > 0, found `{values}`");
        }
        if quantity.counts_steps() && parsed.iter().any(|v| v.fract() != 0.0) {
            bail!("{flag}: {} counts steps: whole numbers of at least 1, found `{values}`", quantity.name());
        }
        Ok(Self { quantity, values: parsed })
    }
}

/// `recipe` at one point of the sweep.
pub fn variant(recipe: &Recipe, point: &[(Quantity, f64)]) -> Result<Recipe> {
    let mut r = recipe.clone();
    for (quantity, value) in point {
        quantity.apply(&mut r, *value)?;
    }
    r.validate("the sweep's variant of the recipe")?;
    Ok(r)
}

/// Runs every (row value, column value) point into `out/ROW-COLUMN` (e.g.
/// `seed-100-experts-25`), then writes `out/sweep.md` and one heatmap per baseline
/// (`out/sweep_vs_BASELINE.png`).
pub fn sweep(recipe: &Recipe, rows: &Axis, columns: &Axis, options: &RunOptions) -> Result<()> {
    let btx = recipe.merges.iter().find(|m| m.method == MergeMethod::Btx).context("a sweep compares a Btx merge with the baselines; the recipe has none")?;
    let mut baselines: Vec<String> = recipe.merges.iter().filter(|m| matches!(m.method, MergeMethod::Upcycle { .. })).map(|m| ModelId::Merged(m.name.clone()).to_string()).collect();
    baselines.extend(recipe.dense_baseline.then(|| ModelId::Dense.to_string()));
    baselines.extend(recipe.data_matched_baseline.then(|| ModelId::DenseData.to_string()));
    if baselines.is_empty() {
        bail!("a sweep needs a baseline: set `dense_baseline`, `data_matched_baseline` or add an Upcycle merge");
    }
    if rows.quantity == columns.quantity {
        bail!("a sweep's rows and columns must vary two different quantities, not {} twice", rows.quantity.name());
    }
    // Every point's recipe first, so that a bad value stops the sweep before anything runs.
    let mut points = Vec::new();
    for &r in &rows.values {
        for &c in &columns.values {
            let out: PathBuf = options.out.join(format!("{}-{}", rows.quantity.folder_part(r), columns.quantity.folder_part(c)));
            points.push((variant(recipe, &[(rows.quantity, r), (columns.quantity, c)])?, out));
        }
    }
    let share_seed = ![rows.quantity, columns.quantity].contains(&Quantity::SeedSteps);
    let grid = run_points(&mut points, columns.values.len(), share_seed, options)?;
    let seeds = grid[0][0].len();
    // The gap at one point: its mean over the seeds and, with several, their range.
    let gap = |runs: &[Vec<ModelRecord>], baseline: &str| -> (f64, String) {
        let per_seed: Vec<f64> = runs
            .iter()
            .filter_map(|models| {
                let loss = |label: &str| models.iter().find(|m| m.model == label).map(|m| m.mean_loss);
                Some(loss(&ModelId::Merged(btx.name.clone()).to_string())? - loss(baseline)?)
            })
            .collect();
        if per_seed.len() != runs.len() {
            return (f64::NAN, "-".into());
        }
        let mean = per_seed.iter().sum::<f64>() / per_seed.len() as f64;
        let (lo, hi) = per_seed.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        (mean, if per_seed.len() > 1 { format!("{mean:+.3} ({lo:+.3} to {hi:+.3})") } else { format!("{mean:+.3}") })
    };
    let (row_name, column_name) = (rows.quantity.name(), columns.quantity.name());
    let mut md = format!("# Sweep: {} minus each baseline\n\n", btx.name);
    writeln!(md, "Mean validation log-perplexity of `{}` minus the baseline's (nats; negative: BTX better), for each {row_name} (rows) and {column_name} (columns). Each point is a whole run in its own folder (`{}`, ...).\n", btx.name, points[0].1.file_name().unwrap_or_default().to_string_lossy())?;
    if seeds > 1 {
        writeln!(md, "{seeds} seeds per point: each cell is the mean gap and, in brackets, the lowest and highest seed's; a range that holds 0 is a tie.\n")?;
    }
    let column_values: Vec<String> = columns.values.iter().map(|v| v.to_string()).collect();
    for baseline in &baselines {
        let cells: Vec<Vec<(f64, String)>> = grid.iter().map(|row| row.iter().map(|runs| gap(runs, baseline)).collect()).collect();
        let values: Vec<Vec<f64>> = cells.iter().map(|r| r.iter().map(|c| c.0).collect()).collect();
        let texts: Vec<Vec<String>> = cells.iter().map(|r| r.iter().map(|c| c.1.clone()).collect()).collect();
        writeln!(md, "## vs {baseline}\n\n| {row_name} \\\\ {column_name} | {} |\n|---|{}", column_values.join(" | "), "---:|".repeat(column_values.len()))?;
        for (r, row) in rows.values.iter().zip(&texts) {
            writeln!(md, "| {r} | {} |", row.join(" | "))?;
        }
        let file = format!("sweep_vs_{}.png", super::plan::slug(baseline));
        let map = Heatmap {
            title: format!("{} minus {baseline}: mean val log-perplexity (nats; < 0: BTX better)", btx.name),
            rows: rows.values.iter().map(|v| format!("{row_name} {v}")).collect(),
            columns: column_values.clone(),
            // Shaded by how much better BTX is (0 where it is worse); the values are printed.
            panels: vec![values.iter().map(|r| r.iter().map(|v| (-v).max(0.0)).collect()).collect()],
            panel_label: format!("{column_name} (darker: BTX further ahead)"),
            scale_label: "BTX ahead (nats)".into(),
            cell_text: vec![texts],
        };
        let figure = plots::heatmap(&map)?;
        write_atomic(&options.out.join(&file), &figure.png)?;
        writeln!(md, "\n![{}]({file})\n", map.title)?;
    }
    write_atomic(&options.out.join("sweep.md"), md.as_bytes())?;
    eprintln!("sweep: {}", options.out.join("sweep.md").display());
    Ok(())
}

/// Runs every point (in rows of `per_row`) and reads each one's report records:
/// `[row][column][seed]`. With `share_seed` (no axis changes the seed) and a recipe of one
/// run that trains its seed, the first point trains it and the others start from it (with
/// `seeds`, each run trains its own).
fn run_points(points: &mut [(Recipe, PathBuf)], per_row: usize, share_seed: bool, options: &RunOptions) -> Result<Vec<Vec<Vec<Vec<ModelRecord>>>>> {
    let first = &points[0];
    let shared_seed = if share_seed && matches!(first.0.seed_model, SeedModel::Train { .. }) && first.0.seeds.is_empty() {
        let seed = first.1.join(StageId::Seed.folder());
        Some(std::path::absolute(&seed).with_context(|| format!("cannot resolve {}", seed.display()))?)
    } else {
        None
    };
    let mut grid = Vec::new();
    for (i, chunk) in points.chunks_mut(per_row).enumerate() {
        let mut row = Vec::new();
        for (j, (variant, out)) in chunk.iter_mut().enumerate() {
            eprintln!("sweep point -> {}", out.display());
            if let (Some(seed), true) = (&shared_seed, i + j > 0) {
                variant.seed_model = SeedModel::Checkpoint(seed.clone());
            }
            run_recipe(variant, &RunOptions { out: out.clone(), ..options.clone() })?;
            // One report per seed (the recipe's `seeds`), or the run's one.
            row.push(variant.runs(out).iter().map(|(_, dir)| ReportRecord::read(dir).map(|r| r.models)).collect::<Result<Vec<_>>>()?);
        }
        grid.push(row);
    }
    Ok(grid)
}
