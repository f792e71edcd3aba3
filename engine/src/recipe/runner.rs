//! Runs a recipe: the plan's stages in order, the experts (and later the finetunes and
//! evaluations) `jobs` at a time; every stage itself is a `btx` subcommand in its own
//! process, and stages touch only through files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};

use super::config::Recipe;
use super::gpus::GpuPool;
use super::graph::StageNode;
use super::plan::Plan;
use super::stage::{Manifest, Stage, StageState};
use super::stage_id::StageId;
use crate::device::DeviceArgs;
use crate::run_lock::{FolderLock, RECIPE_LOCK};

#[derive(Clone)]
pub struct RunOptions {
    pub out: PathBuf,
    pub jobs: usize,
    pub device: DeviceArgs,
    /// The `btx` binary the stages run.
    pub btx: PathBuf,
    /// GPU adapters to give concurrent stages one each (`--devices`); None: every hardware
    /// adapter of the run's graphics API when there are several.
    pub devices: Option<Vec<usize>>,
}

/// Runs `stages` at most `jobs` at a time; with a pool, each stage that needs a GPU runs on
/// the least busy adapter.
fn run_parallel(stages: &[Stage], jobs: usize, btx: &Path, progress: &indicatif::MultiProgress, pool: Option<&GpuPool>) -> Result<Vec<Manifest>> {
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
                let adapter = pool.filter(|_| stage.id.needs_gpu()).and_then(GpuPool::acquire);
                let result = stage.run(btx, progress, adapter.as_ref());
                if let (Some(pool), Some(adapter)) = (pool, &adapter) {
                    pool.release(adapter);
                }
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

/// The graph's stages grouped into waves: each wave's stages wait only for earlier waves.
pub fn waves(graph: &[StageNode]) -> Vec<Vec<StageId>> {
    let mut depth: HashMap<&StageId, usize> = HashMap::new();
    for node in graph {
        let d = node.after.iter().filter_map(|a| depth.get(a)).map(|d| d + 1).max().unwrap_or(0);
        depth.insert(&node.id, d);
    }
    let mut waves: Vec<Vec<StageId>> = vec![vec![]; depth.values().max().map_or(0, |d| d + 1)];
    for node in graph {
        waves[depth[&node.id]].push(node.id.clone());
    }
    waves
}

/// Runs the recipe here (once per seed when it lists `seeds`, then the report across them).
pub fn run_recipe(recipe: &Recipe, options: &RunOptions) -> Result<()> {
    let _lock = FolderLock::acquire(&options.out, RECIPE_LOCK)?;
    for (run, out) in recipe.runs(&options.out) {
        run_once(&run, &RunOptions { out, ..options.clone() })?;
    }
    if !recipe.seeds.is_empty() {
        super::seeds::write_report(&options.out, &recipe.seeds)?;
    }
    Ok(())
}

/// One run: every stage not up to date, wave by wave, `jobs` at a time.
fn run_once(recipe: &Recipe, options: &RunOptions) -> Result<()> {
    std::fs::create_dir_all(&options.out).with_context(|| format!("cannot create {}", options.out.display()))?;
    let plan = Plan { recipe, out: options.out.clone(), device: options.device };
    plan.write_eval_data()?;
    // One progress bar per running training stage (hidden when stderr is not a terminal).
    let progress = indicatif::MultiProgress::new();
    let pool = super::gpus::pool_for(&options.device, options.devices.as_deref())?;
    for wave in waves(&plan.graph()?) {
        // Built when their wave comes: a finetune reads the merge before it.
        let stages = wave.iter().filter(|n| **n != StageId::Report).map(|n| plan.stage(n)).collect::<Result<Vec<_>>>()?;
        run_parallel(&stages, options.jobs, &options.btx, &progress, pool.as_ref())?;
    }
    write_report(&plan)
}

/// The report, from every evaluation's eval.json.
pub fn write_report(plan: &Plan<'_>) -> Result<()> {
    let (seed, _) = plan.seed()?;
    super::report::write_report(plan, &plan.entries(&seed))
}

/// Prints each stage's state (and its Slurm job, if it was submitted to one), per seed.
pub fn print_status(recipe: &Recipe, out: &Path) -> Result<()> {
    for (run, dir) in recipe.runs(out) {
        if !recipe.seeds.is_empty() {
            println!("seed {} ({}):", run.seed, dir.display());
        }
        print_run_status(&run, &dir)?;
    }
    Ok(())
}

/// A training stage's expected peak memory on the CPU (`btx train --plan`), where its config
/// can be written yet (its inputs exist).
fn planned_peak(stage: &super::stage::Stage) -> Option<String> {
    let config: crate::train::TrainConfig = crate::config::parse_ron(stage.config.as_ref()?, &stage.id.to_string()).ok()?;
    Some(crate::train::memory_plan::gb(crate::train::memory_plan::plan(&config).total()))
}

fn print_run_status(recipe: &Recipe, out: &Path) -> Result<()> {
    let plan = Plan { recipe, out: out.to_path_buf(), device: DeviceArgs::new(crate::device::DeviceChoice::Auto) };
    for node in plan.graph()? {
        let stage = plan.stage(&node.id);
        let state = match &stage {
            Ok(s) => match (s.state(), s.failure()) {
                (StageState::Complete, _) => "complete".to_string(),
                (state @ (StageState::Partial | StageState::Pending), Some(error)) => {
                    let next = if state == StageState::Partial { "will resume" } else { "will run again" };
                    format!("failed ({next}): {}", error.trim().replace('\n', "\n    "))
                }
                (StageState::Partial, None) => "partial (will resume)".to_string(),
                (StageState::Stale, _) => "stale (inputs changed; will rerun)".to_string(),
                (StageState::Pending, None) => "pending".to_string(),
            },
            Err(_) if node.id == StageId::Report => (if out.join("report.md").is_file() { "written" } else { "pending" }).to_string(),
            Err(_) => format!("pending (after {})", node.after.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")),
        };
        let memory = stage.as_ref().ok().and_then(planned_peak).map(|p| format!("  memory plan {p}")).unwrap_or_default();
        let detail = stage.ok().and_then(|s| s.manifest()).map(|m| format!("  {} tokens, {:.3e} FLOPs, {:.1} s", m.tokens, m.train_flops, m.wall_time_s)).unwrap_or_default();
        let detail = format!("{memory}{detail}");
        let (job, log) = super::slurm::job_status(&plan, &node.id).map_or((String::new(), None), |(j, log)| (format!("  [{j}]"), log));
        println!("{:<28} {state}{detail}{job}", node.id);
        if let Some(log) = log {
            println!("    its log {}", log.replace('\n', "\n    "));
        }
    }
    Ok(())
}
