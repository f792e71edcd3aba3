//! `cargo xtask bench eval --checkpoint CK [--tasks PATH]... [--limit N] [--pairs N]`: task
//! evaluation, the engine (`btx eval --tasks`) against lm-evaluation-harness's `hf` backend on
//! the same model (exported with `btx export-hf`, float32), the same task files and the same
//! CPU, run alternately `--pairs` times (default 3). Prints each run's wall time (the whole
//! command: start-up, loading, every request) and requests per second (log-likelihood
//! requests plus generations), the ratio engine/lm-eval (above 1: the engine is faster) as the
//! median of the pairs' ratios, and then bench/reference/lm_eval_parity.py's comparison of
//! the last pair: the same choices, the same generations, the same scores.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::bench_data::measure;
use crate::{cpu_model, cpu_vector_units, flag, median};

pub fn run(btx: &Path, args: &[String]) -> Result<()> {
    let checkpoint = flag(args, "--checkpoint").context("--checkpoint CK: the model to evaluate (e.g. runs/btx-tiny/finetune/btx)")?;
    let pairs: usize = flag(args, "--pairs").map_or(Ok(3), str::parse).context("--pairs: expected a number")?;
    let limit = flag(args, "--limit");
    let given: Vec<&str> = args.iter().enumerate().filter(|(_, a)| *a == "--tasks").filter_map(|(i, _)| args.get(i + 1).map(String::as_str)).collect();
    let tasks: Vec<PathBuf> = task_files(if given.is_empty() { vec!["assets/tasks"] } else { given })?;
    let names: Vec<String> = tasks.iter().map(|f| task_name(f)).collect::<Result<_>>()?;
    let mut include: Vec<String> = tasks.iter().filter_map(|f| f.parent().map(|p| p.display().to_string())).collect();
    include.sort();
    include.dedup();
    let python = std::env::var("BTX_PYTHON").unwrap_or_else(|_| "python3".into());
    if !Command::new(&python).args(["-c", "import lm_eval"]).output().is_ok_and(|o| o.status.success()) {
        bail!("lm-evaluation-harness is not available to `{python}` (pip install lm_eval; or set BTX_PYTHON)");
    }
    let work = std::env::temp_dir().join(format!("btx-bench-eval-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let hf = work.join("hf");
    let status = Command::new(btx).args(["export-hf", checkpoint, "--out"]).arg(&hf).status()?;
    if !status.success() {
        bail!("btx export-hf {checkpoint} failed");
    }
    let (mut engine, mut reference) = (Vec::new(), Vec::new());
    let mut requests = 0usize;
    let engine_json = work.join("engine.json");
    for pair in 0..pairs.max(1) {
        let mut command = Command::new(btx);
        command.args(["eval", "--checkpoint", checkpoint, "--device", "cpu", "--log-samples", "--json"]).arg(&engine_json).arg("--tasks").args(&tasks);
        if let Some(l) = limit {
            command.args(["--limit", l]);
        }
        let run = measure(&mut command)?;
        requests = count_requests(&engine_json)?;
        engine.push(run.seconds);
        eprintln!("pair {}/{pairs}: engine {:.1} s ({requests} requests)", pair + 1, run.seconds);
        let output = work.join(format!("lm-eval-{pair}"));
        let mut command = Command::new(&python);
        command
            .args(["-m", "lm_eval", "--model", "hf", "--model_args"])
            .arg(format!("pretrained={},dtype=float32", hf.display()))
            .args(["--device", "cpu", "--log_samples", "--tasks", &names.join(",")])
            .arg("--output_path")
            .arg(&output);
        for folder in &include {
            command.args(["--include_path", folder]);
        }
        if let Some(l) = limit {
            command.args(["--limit", l]);
        }
        let run = measure(&mut command)?;
        reference.push(run.seconds);
        eprintln!("pair {}/{pairs}: lm-eval {:.1} s", pair + 1, run.seconds);
    }
    let version = Command::new(&python).args(["-c", "import lm_eval, torch; print(lm_eval.__version__, torch.__version__)"]).output()?;
    println!(
        "\nCPU: {} ({}), {} threads; {} tasks, {requests} requests (log-likelihoods + generations); lm-eval {} (hf backend, batch size 1, float32)",
        cpu_model(),
        cpu_vector_units(),
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        names.len(),
        String::from_utf8_lossy(&version.stdout).trim().replace(' ', ", torch ")
    );
    let ratios: Vec<f64> = reference.iter().zip(&engine).map(|(r, e)| r / e).collect();
    let (lo, hi) = ratios.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), x| (l.min(*x), h.max(*x)));
    println!("{:<10} {:>10} {:>14}", "", "seconds", "requests/s");
    println!("{:<10} {:>10.1} {:>14.1}", "engine", median(&engine), requests as f64 / median(&engine));
    println!("{:<10} {:>10.1} {:>14.1}", "lm-eval", median(&reference), requests as f64 / median(&reference));
    println!("requests/s engine / lm-eval: {:.2} ({lo:.2}-{hi:.2}), median of {} alternating pairs", median(&ratios), ratios.len());
    let last = work.join(format!("lm-eval-{}", pairs.max(1) - 1));
    let status = Command::new(&python).arg("bench/reference/lm_eval_parity.py").arg(&engine_json).arg(&last).status()?;
    let _ = std::fs::remove_dir_all(&work);
    if !status.success() {
        bail!("the engine's scores differ from lm-evaluation-harness's (above)");
    }
    Ok(())
}

/// Task files: files, or folders' `*.yaml`.
fn task_files(paths: Vec<&str>) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let path = PathBuf::from(path);
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&path)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "yaml")).collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

/// The `task:` name of a task file (what lm_eval's --tasks takes).
fn task_name(file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("task:").map(|n| n.trim().trim_matches('"').trim_matches('\'').to_string()))
        .with_context(|| format!("{}: no `task:` line", file.display()))
}

/// Requests the engine made: a log-likelihood per choice (or continuation), one generation
/// per generated document.
fn count_requests(json: &Path) -> Result<usize> {
    let value: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json)?)?;
    let samples = value["samples"].as_object().context("no samples in the engine's results")?;
    Ok(samples
        .values()
        .flat_map(|docs| docs.as_array().cloned().unwrap_or_default())
        .map(|doc| doc["loglikelihoods"].as_array().map_or(1, Vec::len))
        .sum())
}
