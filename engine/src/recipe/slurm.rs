//! Recipes on Slurm: every stage that is not up to date becomes one `sbatch` job running
//! `btx recipe stage` (the same manifest logic as a local run: skip, resume, rerun on
//! change), each waiting for the jobs of the stages it needs (`--dependency=afterok`), so a
//! whole recipe is submitted at once. The expert stages need nothing but the seed, so they
//! run as separate jobs, on separate nodes, at once or days apart.
//!
//! The run folder, the binary and the inputs must be on a file system every node shares (a
//! submission refuses node-local folders such as /tmp; see `check_shared_paths`). Each job's
//! script, output and id are kept in its stage folder (`slurm.sh`, `slurm-ID.out`,
//! `slurm.json`); a stage whose job is still queued or running is not submitted twice, and a
//! failed, cancelled or timed-out one is submitted again by the next `recipe run`, resuming
//! from its last checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::graph::StageNode;
use super::plan::Plan;
use super::stage::StageState;
use super::stage_id::StageId;
use crate::fsutil::write_atomic;

/// `btx recipe run --scheduler slurm` options.
#[derive(Debug, Clone, Default)]
pub struct SlurmOptions {
    pub partition: Option<String>,
    /// GPUs per job (`--gres=gpu:N`); 0 = none.
    pub gpus_per_job: usize,
    /// Time limit per job (`--time`).
    pub time: Option<String>,
    /// More `#SBATCH` lines, e.g. `--account=lab`.
    pub sbatch_args: Vec<String>,
    /// Print the scripts and the dependency graph; submit nothing.
    pub dry_run: bool,
    /// Submit even if a path the jobs need is in a node-local folder (a one-node cluster, or
    /// one whose /tmp is shared).
    pub allow_node_local: bool,
}

/// Folders that are each node's own on a typical cluster.
const NODE_LOCAL: [&str; 4] = ["/tmp", "/var/tmp", "/dev/shm", "/run/user"];

/// Every path a job needs must be one the nodes share: the run folder (every job reads and
/// writes it), the `btx` binary, the folder the jobs start in (where the recipe's relative
/// paths resolve) and the data and tokenizer files of the stages that can be planned now.
/// A node-local one is refused for a submission and warned about by a dry run (which only
/// prints).
pub fn check_shared_paths(plan: &Plan<'_>, btx: &Path, options: &SlurmOptions) -> Result<()> {
    let cwd = std::env::current_dir().unwrap_or_default();
    let mut needed = vec![("the run folder (--out)", plan.out.clone()), ("the btx binary", btx.to_path_buf()), ("the folder the jobs start in (this one)", cwd)];
    let stages = plan.graph().map(|g| g.iter().filter_map(|n| plan.stage(&n.id).ok()).collect::<Vec<_>>()).unwrap_or_default();
    let mut inputs: Vec<PathBuf> = stages.into_iter().flat_map(|s| s.inputs).collect();
    inputs.sort();
    inputs.dedup();
    needed.extend(inputs.into_iter().map(|p| ("an input of the recipe", p)));
    let local: Vec<String> = needed
        .iter()
        .filter(|(_, p)| NODE_LOCAL.iter().any(|l| p.starts_with(l)))
        .map(|(what, p)| format!("{what}: {}", p.display()))
        .collect();
    if local.is_empty() || options.allow_node_local {
        return Ok(());
    }
    let message = format!(
        "these paths are in node-local folders ({}), which the other nodes of a cluster do not see:\n  {}\n\
         Put them on a file system every node shares, or pass --allow-node-local if this cluster is one node \
         (or shares these folders)",
        NODE_LOCAL.join(", "),
        local.join("\n  ")
    );
    if options.dry_run {
        eprintln!("warning: {message}");
        return Ok(());
    }
    bail!("{message}")
}

/// What a stage folder records of its Slurm job.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobRecord {
    job_id: String,
}

const JOB_FILE: &str = "slurm.json";
const SCRIPT_FILE: &str = "slurm.sh";

/// Where a stage's Slurm files live: its own folder (the report's: RUN/report-job).
fn stage_dir(plan: &Plan<'_>, stage: &StageId) -> PathBuf {
    plan.dir(stage)
}

/// Runs `program` and returns its stdout, or an error with its stderr.
fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("cannot run `{program}`: is Slurm installed here?"))?;
    if !out.status.success() {
        bail!("`{program} {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A job's state: from squeue while Slurm holds it, then from sacct (accounting, or the
/// job completion log with `-c`).
pub fn job_state(id: &str) -> String {
    let first = |s: String| s.lines().next().map(|l| l.split_whitespace().next().unwrap_or("").trim_end_matches('+').to_string()).filter(|s| !s.is_empty());
    output("squeue", &["-h", "-j", id, "-o", "%T"])
        .ok()
        .and_then(first)
        .or_else(|| output("sacct", &["-n", "-X", "-P", "-o", "State", "-j", id]).ok().and_then(first))
        .or_else(|| output("sacct", &["-c", "-n", "-P", "-o", "State", "-j", id]).ok().and_then(first))
        .unwrap_or_else(|| "UNKNOWN".into())
}

fn is_active(state: &str) -> bool {
    matches!(state, "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "REQUEUED" | "RESIZING" | "SUSPENDED")
}

fn recorded_job(plan: &Plan<'_>, stage: &StageId) -> Option<String> {
    let text = std::fs::read_to_string(stage_dir(plan, stage).join(JOB_FILE)).ok()?;
    serde_json::from_str::<JobRecord>(&text).ok().map(|r| r.job_id)
}

/// `job ID STATE` for a stage submitted to Slurm (for `recipe status`), and, for a job that
/// ended without completing, the last lines of its output.
pub fn job_status(plan: &Plan<'_>, stage: &StageId) -> Option<(String, Option<String>)> {
    let id = recorded_job(plan, stage)?;
    let state = job_state(&id);
    let tail = (!is_active(&state) && state != "COMPLETED").then(|| log_tail(plan, stage, &id));
    Some((format!("slurm job {id} {state}"), tail))
}

/// The last 12 lines of a job's output.
fn log_tail(plan: &Plan<'_>, stage: &StageId, id: &str) -> String {
    let log = stage_dir(plan, stage).join(format!("slurm-{id}.out"));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect();
    format!("{}:\n{}", log.display(), tail.join("\n"))
}

/// Whether a stage needs no job: its manifest matches (the report: every other stage is
/// complete and the report is written).
fn is_complete(plan: &Plan<'_>, node: &StageNode, complete: &HashMap<StageId, bool>) -> bool {
    if node.id == StageId::Report {
        return node.after.iter().all(|a| complete.get(a) == Some(&true)) && plan.out.join("report.md").is_file();
    }
    plan.stage(&node.id).is_ok_and(|s| s.state() == StageState::Complete)
}

/// The batch script of one stage.
pub fn job_script(plan: &Plan<'_>, stage: &StageId, recipe: &Path, btx: &Path, options: &SlurmOptions) -> String {
    let dir = stage_dir(plan, stage);
    let name = plan.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut lines = vec![
        "#!/bin/bash".to_string(),
        format!("#SBATCH --job-name=btx:{name}:{stage}"),
        format!("#SBATCH --output={}/slurm-%j.out", dir.display()),
        // Relative paths in the recipe (data, tokenizer) resolve as they did at submission.
        format!("#SBATCH --chdir={}", std::env::current_dir().unwrap_or_default().display()),
    ];
    lines.extend(options.partition.iter().map(|p| format!("#SBATCH --partition={p}")));
    if options.gpus_per_job > 0 && stage.needs_gpu() {
        lines.push(format!("#SBATCH --gres=gpu:{}", options.gpus_per_job));
    }
    lines.extend(options.time.iter().map(|t| format!("#SBATCH --time={t}")));
    lines.extend(options.sbatch_args.iter().map(|a| format!("#SBATCH {a}")));
    let mut command = vec![btx.display().to_string(), "recipe".into(), "stage".into(), recipe.display().to_string()];
    command.extend(["--out".to_string(), plan.out.display().to_string(), "--stage".into(), stage.to_string()]);
    command.extend(plan.device.to_args());
    lines.extend(["set -euo pipefail".to_string(), format!("exec {}", command.join(" "))]);
    lines.join("\n") + "\n"
}

/// Submits every stage that is not up to date (or prints what it would submit), each
/// waiting for the jobs of the stages it needs; returns the job ids by stage. The caller
/// checks the paths first (`check_shared_paths`).
pub fn submit(plan: &Plan<'_>, btx: &Path, options: &SlurmOptions) -> Result<Vec<(StageId, String)>> {
    std::fs::create_dir_all(&plan.out).with_context(|| format!("cannot create {}", plan.out.display()))?;
    // The jobs read this copy: editing the recipe later cannot change queued jobs.
    let frozen = plan.out.join("recipe.ron");
    if !options.dry_run {
        write_atomic(&frozen, crate::config::to_ron(plan.recipe)?.as_bytes())?;
        plan.write_eval_data()?;
    }
    let graph = plan.graph()?;
    let (mut complete, mut jobs): (HashMap<StageId, bool>, HashMap<StageId, String>) = (HashMap::new(), HashMap::new());
    let mut submitted = Vec::new();
    for node in &graph {
        let done = is_complete(plan, node, &complete);
        complete.insert(node.id.clone(), done);
        if done {
            println!("{:<28} complete", node.id);
            continue;
        }
        if let Some(id) = recorded_job(plan, &node.id).filter(|id| !options.dry_run && is_active(&job_state(id))) {
            println!("{:<28} already queued or running as job {id}", node.id);
            jobs.insert(node.id.clone(), id);
            continue;
        }
        let waits: Vec<&String> = node.after.iter().filter_map(|a| jobs.get(a)).collect();
        let script = job_script(plan, &node.id, &frozen, btx, options);
        let dependency = (!waits.is_empty()).then(|| format!("--dependency=afterok:{}", waits.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(":")));
        if options.dry_run {
            let id = format!("<{}>", node.id);
            println!("# {} {}\n{script}", node.id, dependency.as_deref().unwrap_or("(no dependency)"));
            jobs.insert(node.id.clone(), id.clone());
            submitted.push((node.id.clone(), id));
            continue;
        }
        let dir = stage_dir(plan, &node.id);
        std::fs::create_dir_all(&dir)?;
        write_atomic(&dir.join(SCRIPT_FILE), script.as_bytes())?;
        let script_path = dir.join(SCRIPT_FILE).display().to_string();
        let mut args = vec!["--parsable"];
        if let Some(d) = &dependency {
            // A dependency that fails cancels its dependents instead of leaving them queued.
            args.extend([d.as_str(), "--kill-on-invalid-dep=yes"]);
        }
        args.push(&script_path);
        let id = output("sbatch", &args)?.split(';').next().unwrap_or_default().to_string();
        write_atomic(&dir.join(JOB_FILE), serde_json::to_string(&JobRecord { job_id: id.clone() })?.as_bytes())?;
        println!("{:<28} submitted as job {id}{}", node.id, dependency.map(|d| format!(" ({d})")).unwrap_or_default());
        jobs.insert(node.id.clone(), id.clone());
        submitted.push((node.id.clone(), id));
    }
    if options.dry_run {
        println!("# dependency graph (stage <- the stages it waits for)");
        for node in &graph {
            let after: Vec<String> = node.after.iter().map(|a| a.to_string()).collect();
            println!("{} <- {}", node.id, if after.is_empty() { "-".to_string() } else { after.join(", ") });
        }
    }
    Ok(submitted)
}

/// Waits until every submitted job has ended, printing each state change; fails with the
/// log of the first job that did not complete.
pub fn wait(plan: &Plan<'_>, jobs: &[(StageId, String)]) -> Result<()> {
    let mut last: HashMap<&StageId, String> = HashMap::new();
    loop {
        let mut active = 0;
        for (stage, id) in jobs {
            let state = job_state(id);
            if last.get(stage) != Some(&state) {
                eprintln!("[{stage}] job {id} {state}");
                last.insert(stage, state.clone());
            }
            active += is_active(&state) as usize;
        }
        if active == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
    for (stage, id) in jobs {
        let state = &last[stage];
        if state != "COMPLETED" {
            bail!("stage {stage}: job {id} ended {state}; its log {}", log_tail(plan, stage, id));
        }
    }
    eprintln!("all {} jobs completed; report: {}", jobs.len(), plan.out.join("report.md").display());
    Ok(())
}
