//! `btx recipe run|status|stage`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::resolve;
use crate::device::DeviceArgs;
use crate::recipe::stage_id::StageId;
use crate::recipe::plan::Plan;
use crate::recipe::slurm::{SlurmOptions, check_shared_paths, submit, wait};
use crate::run_lock::{FolderLock, RECIPE_LOCK};
use crate::recipe::{Recipe, RunOptions, print_status, run_recipe};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheduler {
    /// Stages as processes on this machine.
    Local,
    /// Stages as sbatch jobs, chained by Slurm dependencies.
    Slurm,
}

#[derive(clap::Subcommand)]
pub enum RecipeCommand {
    /// Run every stage that is not up to date, then write RUN/report.md.
    Run {
        recipe: PathBuf,
        /// Run folder (default: runs/<recipe name>). With Slurm: on a file system every node
        /// shares.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Local: independent stages (the experts) run this many at a time.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Local, on a GPU: the adapters (indices in `btx devices`' list of the run's graphics
        /// API, e.g. 0,1,2,3) that concurrent stages get one each; default: all of them.
        #[arg(long, value_delimiter = ',')]
        devices: Option<Vec<usize>>,
        #[command(flatten)]
        device: DeviceArgs,
        #[arg(long, value_enum, default_value = "local")]
        scheduler: Scheduler,
        /// Slurm: the partition to submit to.
        #[arg(long)]
        partition: Option<String>,
        /// Slurm: GPUs per job (--gres=gpu:N).
        #[arg(long, default_value_t = 0)]
        gpus_per_job: usize,
        /// Slurm: time limit per job (e.g. 2:00:00).
        #[arg(long)]
        time: Option<String>,
        /// Slurm: one more #SBATCH line per use, e.g. --sbatch-arg=--account=lab.
        #[arg(long, allow_hyphen_values = true)]
        sbatch_arg: Vec<String>,
        /// Slurm: print the batch scripts and the dependency graph, submit nothing.
        #[arg(long)]
        dry_run: bool,
        /// Slurm: stay until every job has ended, with progress.
        #[arg(long)]
        wait: bool,
        /// Slurm: submit even if the run folder, the btx binary or an input is in a
        /// node-local folder (/tmp, ...): for a one-node cluster, or one that shares them.
        #[arg(long)]
        allow_node_local: bool,
    },
    /// Run the recipe at every (seed steps, expert steps) point and report BTX minus each
    /// baseline in mean validation log-perplexity (RUN/sweep.md and a heatmap per baseline).
    Sweep {
        recipe: PathBuf,
        /// Seed training lengths, e.g. 100,400,1600 (the rows; short for
        /// `--rows seed-steps=...`).
        #[arg(long, conflicts_with = "rows")]
        seed_steps: Option<String>,
        /// Expert training lengths, e.g. 25,100,400 (the columns; short for
        /// `--columns expert-steps=...`).
        #[arg(long, conflicts_with = "columns")]
        expert_steps: Option<String>,
        /// The rows' quantity and values, e.g. `expert-lr=3e-4,1e-3,3e-3`; one of seed-steps,
        /// expert-steps, expert-lr, finetune-steps, finetune-lr, router-lr-multiplier.
        #[arg(long)]
        rows: Option<String>,
        /// The columns' quantity and values, e.g. `router-lr-multiplier=1,10,30`.
        #[arg(long)]
        columns: Option<String>,
        /// Sweep folder (default: runs/<recipe name>-sweep).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Each stage's state: complete, partial, stale or pending (and its Slurm job, if any).
    Status {
        recipe: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run one stage of a recipe (what each Slurm job runs): skipped if up to date, resumed
    /// if interrupted. `--stage report` writes the report.
    Stage {
        recipe: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        stage: StageId,
        #[command(flatten)]
        device: DeviceArgs,
    },
}

/// `runs/<recipe file stem><suffix>` unless `--out` says otherwise.
fn recipe_out(recipe: &Path, out: Option<PathBuf>, suffix: &str) -> PathBuf {
    out.unwrap_or_else(|| {
        let name = recipe.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "recipe".into());
        PathBuf::from("runs").join(format!("{name}{suffix}"))
    })
}

fn btx() -> Result<PathBuf> {
    std::env::current_exe().context("cannot find the btx binary")
}

pub fn run(command: RecipeCommand) -> Result<()> {
    match command {
        RecipeCommand::Run { recipe, out, jobs, devices, device, scheduler, partition, gpus_per_job, time, sbatch_arg, dry_run, wait: stay, allow_node_local } => {
            let parsed = Recipe::load(&recipe)?;
            // Before any stage starts: data prepared beforehand fits this recipe.
            parsed.check_prepared_domains(&recipe.display().to_string())?;
            // ... and its task files read (paths from the current directory, like its data).
            parsed.task_inputs().with_context(|| format!("{}: field `eval.tasks`", recipe.display()))?;
            let out = resolve(&recipe_out(&recipe, out, ""));
            match scheduler {
                Scheduler::Local => run_recipe(&parsed, &RunOptions { out, jobs, device, btx: btx()?, devices }),
                Scheduler::Slurm => {
                    let options = SlurmOptions { partition, gpus_per_job, time, sbatch_args: sbatch_arg, dry_run, allow_node_local };
                    // Every seed's run is submitted before any is waited for.
                    let runs = parsed.runs(&out);
                    let plans: Vec<Plan<'_>> = runs.iter().map(|(r, o)| Plan { recipe: r, out: o.clone(), device }).collect();
                    for plan in &plans {
                        check_shared_paths(plan, &btx()?, &options)?;
                    }
                    // One submitter (and waiter) per run folder; a dry run writes nothing.
                    let _lock = if dry_run { None } else { Some(FolderLock::acquire(&out, RECIPE_LOCK)?) };
                    let jobs = plans.iter().map(|p| submit(p, &btx()?, &options)).collect::<Result<Vec<_>>>()?;
                    let nothing_submitted = jobs.iter().all(Vec::is_empty);
                    if nothing_submitted && !dry_run && !parsed.seeds.is_empty() {
                        return crate::recipe::seeds::write_report(&out, &parsed.seeds);
                    }
                    if !stay || dry_run {
                        return Ok(());
                    }
                    for (plan, jobs) in plans.iter().zip(&jobs) {
                        wait(plan, jobs)?;
                    }
                    if !parsed.seeds.is_empty() {
                        crate::recipe::seeds::write_report(&out, &parsed.seeds)?;
                    }
                    Ok(())
                }
            }
        }
        RecipeCommand::Sweep { recipe, seed_steps, expert_steps, rows, columns, out, jobs, device } => {
            use crate::recipe::sweep::{Axis, Quantity, sweep};
            let axis = |short: Option<String>, short_flag: &str, quantity: Quantity, long: Option<String>, long_flag: &str| -> Result<Axis> {
                match (short, long) {
                    (Some(values), _) => Axis::of(quantity, &values, short_flag),
                    (None, Some(text)) => Axis::parse(&text, long_flag),
                    (None, None) => anyhow::bail!("a sweep needs its {long_flag} (or {short_flag})"),
                }
            };
            let rows = axis(seed_steps, "--seed-steps", Quantity::SeedSteps, rows, "--rows")?;
            let columns = axis(expert_steps, "--expert-steps", Quantity::ExpertSteps, columns, "--columns")?;
            let parsed = Recipe::load(&recipe)?;
            let out = resolve(&recipe_out(&recipe, out, "-sweep"));
            sweep(&parsed, &rows, &columns, &RunOptions { out, jobs, device, btx: btx()?, devices: None })
        }
        RecipeCommand::Status { recipe, out } => print_status(&Recipe::load(&recipe)?, &resolve(&recipe_out(&recipe, out, ""))),
        RecipeCommand::Stage { recipe, out, stage, device } => {
            let parsed = Recipe::load(&recipe)?;
            let plan = Plan { recipe: &parsed, out: resolve(&out), device };
            if stage == StageId::Report {
                return crate::recipe::runner::write_report(&plan);
            }
            plan.stage(&stage)?.run(&btx()?, &indicatif::MultiProgress::new(), None)?;
            Ok(())
        }
    }
}
