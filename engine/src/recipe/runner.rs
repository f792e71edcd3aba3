//! Runs a recipe: the plan's stages in order, the experts (and later the finetunes and
//! evaluations) `jobs` at a time; every stage itself is a `btx` subcommand in its own
//! process, and stages touch only through files.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};

use super::config::Recipe;
use super::plan::Plan;
use super::stage::{Manifest, Stage, StageState};
use crate::device::DeviceArgs;

pub struct RunOptions {
    pub out: PathBuf,
    pub jobs: usize,
    pub device: DeviceArgs,
    /// The `btx` binary the stages run.
    pub btx: PathBuf,
}

/// Runs `stages` at most `jobs` at a time.
fn run_parallel(stages: &[Stage], jobs: usize, btx: &Path, progress: &indicatif::MultiProgress) -> Result<Vec<Manifest>> {
    let next = Mutex::new(0usize);
    let results: Mutex<Vec<Option<Result<Manifest>>>> = Mutex::new((0..stages.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1).min(stages.len().max(1)) {
            scope.spawn(|| loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some(stage) = stages.get(i) else { break };
                let result = stage.run(btx, progress);
                let failed = result.is_err();
                results.lock().unwrap()[i] = Some(result);
                if failed {
                    break;
                }
            });
        }
    });
    results.into_inner().unwrap().into_iter().flatten().collect()
}

pub fn run_recipe(recipe: &Recipe, options: &RunOptions) -> Result<()> {
    std::fs::create_dir_all(&options.out).with_context(|| format!("cannot create {}", options.out.display()))?;
    let plan = Plan { recipe, out: options.out.clone(), device: options.device.clone() };
    // One progress bar per running training stage (hidden when stderr is not a terminal).
    let progress = indicatif::MultiProgress::new();
    let btx = &options.btx;
    let (seed, seed_stage) = plan.seed()?;
    if let Some(stage) = seed_stage {
        stage.run(btx, &progress)?;
    }
    run_parallel(&plan.expert_stages(&seed)?, options.jobs, btx, &progress)?;
    plan.write_eval_data()?;
    for stage in plan.merge_stages(&seed)? {
        stage.run(btx, &progress)?;
    }
    let mut later = plan.finetune_stages()?;
    later.extend(plan.dense_stage(&seed)?);
    run_parallel(&later, options.jobs, btx, &progress)?;
    let entries = plan.entries(&seed);
    let eval_stages: Vec<Stage> = entries.iter().map(|(_, s)| s.clone()).collect();
    run_parallel(&eval_stages, options.jobs, btx, &progress)?;
    super::report::write_report(&plan, &entries)
}

/// Prints each stage's state (as far as the plan can be known without running anything).
pub fn print_status(recipe: &Recipe, out: &Path) -> Result<()> {
    let plan = Plan { recipe, out: out.to_path_buf(), device: DeviceArgs::new(crate::device::DeviceChoice::Auto) };
    let (seed, seed_stage) = plan.seed()?;
    let mut stages: Vec<Stage> = seed_stage.into_iter().collect();
    stages.extend(plan.expert_stages(&seed)?);
    stages.extend(plan.merge_stages(&seed)?);
    match plan.finetune_stages() {
        Ok(ft) => stages.extend(ft),
        Err(_) => println!("{:<28} pending (after the merges)", "finetune/*"),
    }
    for s in &stages {
        let state = match s.state() {
            StageState::Complete => "complete",
            StageState::Partial => "partial (will resume)",
            StageState::Stale => "stale (inputs changed; will rerun)",
            StageState::Pending => "pending",
        };
        let detail = s.manifest().map(|m| format!("  {} tokens, {:.3e} FLOPs, {:.1} s", m.tokens, m.train_flops, m.wall_time_s)).unwrap_or_default();
        println!("{:<28} {state}{detail}", s.name);
    }
    Ok(())
}
