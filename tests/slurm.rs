//! Recipes on Slurm: the batch scripts and dependency graph of a three-expert recipe against a
//! golden file; then, on a real one-node Slurm (tests/slurm/local-cluster.sh, started by
//! `.ci/run`), a recipe run as jobs gives the local run's report, and an expert job cancelled
//! mid-run is resubmitted by the next run, resumes, and nothing finished runs again.
//!
//! The real-Slurm test needs SLURM_CONF naming a running cluster; without one it says it is
//! skipped, and with BTX_REQUIRE_SLURM=1 (as `.ci/run` sets) that is a failure.

use std::path::{Path, PathBuf};

use crate::common::*;

/// A folder for a run, under the target folder (which may itself be under /tmp: the one-node
/// test cluster shares it, and its submissions say so with --allow-node-local).
fn shared_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("slurm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A small recipe with three experts; `slow_steps` for the third, so it can be caught running.
fn recipe(dir: &Path, slow_steps: usize) -> PathBuf {
    let english = small_corpus(dir, "english.txt", 30_000);
    let code = small_corpus(dir, "code.txt", 30_000);
    let text = format!(
        r#"(
    model: (vocab_size: 4096, d_model: 32, n_layers: 2, n_heads: 4, n_kv_heads: 2, d_ff: 64, max_seq_len: 64),
    tokenizer: "{tokenizer}",
    seq_len: 32,
    domains: [
        (name: "english", source: File("{english}")),
        (name: "code", source: File("{code}")),
        (name: "arithmetic", source: Arithmetic((max_digits: 2, lines: 2000))),
    ],
    optimizer: (lr: 1e-2, warmup_steps: 3),
    batch_size: 4,
    seed: 5,
    seed_model: Train(steps: 10, mixture: [("english", 1.0), ("code", 1.0), ("arithmetic", 1.0)]),
    experts: [
        (name: "en", data: [("english", 1.0)], steps: 6),
        (name: "code", data: [("code", 1.0)], steps: 6),
        (name: "arith", data: [("arithmetic", 1.0)], steps: {slow_steps}),
    ],
    merges: [(name: "btx", method: Btx), (name: "ensemble", method: Ensemble(top_k: None))],
    finetune: (steps: 4),
    eval: (batches: 1, arithmetic_problems: 0, ensemble_prior_sequences: 2, ensemble_sequences: 4),
)"#,
        tokenizer = repo_root().join("assets/tokenizer.json").display(),
        english = english.display(),
        code = code.display(),
    );
    let path = dir.join("recipe.ron");
    std::fs::write(&path, text).unwrap();
    path
}

fn btx(args: &[&str], cwd: &Path) -> (bool, String) {
    let (ok, stdout, stderr) = btx_streams(args, cwd);
    (ok, format!("{stdout}{stderr}"))
}

/// Success, stdout and stderr.
fn btx_streams(args: &[&str], cwd: &Path) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_btx")).args(args).current_dir(cwd).output().expect("btx runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn slurm_scripts_and_graph_match_the_golden_file() {
    let dir = shared_dir("golden");
    let recipe = recipe(&dir, 6);
    let run = dir.join("run");
    // The scripts and graph are stdout; a warning about node-local paths (when this clone is
    // under /tmp) goes to stderr and does not stop a dry run.
    let (ok, out, stderr) = btx_streams(&["recipe", "run", recipe.to_str().unwrap(), "--out", run.to_str().unwrap(), "--device", "cpu", "--scheduler", "slurm",
        "--partition", "gpu", "--gpus-per-job", "1", "--time", "1:00:00", "--sbatch-arg=--account=lab", "--dry-run"], &dir);
    assert!(ok, "{stderr}");
    let normalized = out
        .replace(&run.display().to_string(), "RUN")
        .replace(env!("CARGO_BIN_EXE_btx"), "BTX")
        .replace(&dir.display().to_string(), "CWD");
    let golden = repo_root().join("tests/slurm/golden-three-experts.txt");
    if std::env::var("BTX_UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(&golden, &normalized).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap();
    assert_eq!(normalized, want, "dry-run output differs from {} (BTX_UPDATE_GOLDEN=1 rewrites it)", golden.display());
    assert!(!run.join("seed").exists(), "a dry run wrote stage folders");

}

/// A submission whose run folder, binary or inputs are node-local is refused before anything
/// is submitted (so this needs no cluster), naming each path; a dry run only warns.
#[test]
fn a_submission_with_node_local_paths_is_refused_naming_them() {
    let dir = tempfile::Builder::new().prefix("btx-slurm-local").tempdir_in("/tmp").unwrap();
    let recipe = recipe(dir.path(), 6);
    let run = dir.path().join("run");
    let args = ["recipe", "run", recipe.to_str().unwrap(), "--out", run.to_str().unwrap(), "--scheduler", "slurm"];
    let (ok, out) = btx(&args, dir.path());
    assert!(!ok, "{out}");
    for named in [format!("the run folder (--out): {}", run.display()), format!("an input of the recipe: {}", dir.path().join("english.txt").display())] {
        assert!(out.contains(&named), "the refusal does not name `{named}`:\n{out}");
    }
    assert!(out.contains("--allow-node-local"), "{out}");
    assert!(!run.join("recipe.ron").exists() && !run.join("seed").exists(), "a refused submission wrote into the run folder");

    let (ok, stdout, stderr) = btx_streams(&[&args[..], &["--dry-run"]].concat(), dir.path());
    assert!(ok && stderr.contains("warning: these paths are in node-local folders") && stdout.contains("#SBATCH"), "{stderr}");
}

/// The cluster, if one runs here.
fn cluster() -> Option<()> {
    let found = std::env::var_os("SLURM_CONF").is_some()
        && std::process::Command::new("sinfo").arg("-h").output().is_ok_and(|o| o.status.success());
    if found {
        return Some(());
    }
    let why = "no Slurm cluster (SLURM_CONF unset, or sinfo fails): start one with tests/slurm/local-cluster.sh";
    if std::env::var("BTX_REQUIRE_SLURM").is_ok_and(|v| v == "1") {
        panic!("BTX_REQUIRE_SLURM=1 but {why}");
    }
    eprintln!("SKIPPED a_recipe_runs_through_a_real_slurm: {why}");
    None
}

fn mean_losses(run: &Path) -> Vec<(String, f64)> {
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    report["models"].as_array().unwrap().iter().map(|m| (m["model"].as_str().unwrap().to_string(), m["mean_loss"].as_f64().unwrap())).collect()
}

fn recorded_job(run: &Path, stage: &str) -> String {
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join(stage).join("slurm.json")).unwrap()).unwrap();
    record["job_id"].as_str().unwrap().to_string()
}

#[test]
fn a_recipe_runs_through_a_real_slurm_and_a_cancelled_expert_resumes() {
    let Some(()) = cluster() else { return };
    let dir = shared_dir("real");
    let recipe = recipe(&dir, 3000);
    let r = recipe.to_str().unwrap();
    let local = dir.join("local");
    let (ok, out) = btx(&["recipe", "run", r, "--out", local.to_str().unwrap(), "--device", "cpu"], &dir);
    assert!(ok, "{out}");

    // The whole recipe as jobs, waited for: the same report as the local run.
    let slurm = dir.join("slurm");
    let (ok, out) = btx(&["recipe", "run", r, "--out", slurm.to_str().unwrap(), "--device", "cpu", "--scheduler", "slurm", "--allow-node-local", "--wait"], &dir);
    assert!(ok, "{out}");
    assert_eq!(mean_losses(&slurm), mean_losses(&local));
    let experts: Vec<String> = ["experts/en", "experts/code", "experts/arith"].iter().map(|s| recorded_job(&slurm, s)).collect();
    assert_eq!(experts.iter().collect::<std::collections::HashSet<_>>().len(), 3, "the experts were not separate jobs");

    // Submitted, then the slow expert's job cancelled once it has a checkpoint and the stages
    // that do not need it have finished (so the rerun must find them complete, on a busy
    // machine too).
    let run = dir.join("cancelled");
    let (ok, out) = btx(&["recipe", "run", r, "--out", run.to_str().unwrap(), "--device", "cpu", "--scheduler", "slurm", "--allow-node-local"], &dir);
    assert!(ok, "{out}");
    let job = recorded_job(&run, "experts/arith");
    let started = std::time::Instant::now();
    let independent_done = || ["eval/expert-en", "eval/expert-code", "eval/seed"].iter().all(|s| run.join(s).join("manifest.json").is_file());
    while !run.join("experts/arith/latest").is_file() || !independent_done() {
        assert!(started.elapsed().as_secs() < 300, "experts/arith wrote no checkpoint, or the other evaluations did not finish: {}", btx::recipe::slurm::job_state(&job));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(std::process::Command::new("scancel").arg(&job).status().unwrap().success());
    while btx::recipe::slurm::job_state(&recorded_job(&run, "report-job")) == "PENDING" {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let (ok, out) = btx(&["recipe", "status", r, "--out", run.to_str().unwrap()], &dir);
    assert!(ok && out.contains(&format!("slurm job {job} CANCELLED")), "{out}");

    // The next run resubmits only the cancelled expert and what depends on it.
    let (ok, out) = btx(&["recipe", "run", r, "--out", run.to_str().unwrap(), "--device", "cpu", "--scheduler", "slurm", "--allow-node-local", "--wait"], &dir);
    assert!(ok, "{out}");
    for done in ["seed ", "experts/en ", "experts/code ", "eval/seed ", "eval/expert-en ", "eval/expert-code "] {
        assert!(out.lines().any(|l| l.starts_with(done) && l.ends_with("complete")), "{done} was not kept:\n{out}");
    }
    for again in ["experts/arith", "merges/btx", "finetune/btx", "eval/btx", "eval/ensemble"] {
        assert!(out.lines().any(|l| l.starts_with(&format!("{again} ")) && l.contains("submitted as job")), "{again} was not resubmitted:\n{out}");
    }
    let log = std::fs::read_to_string(run.join("experts/arith").join(format!("slurm-{}.out", recorded_job(&run, "experts/arith")))).unwrap();
    assert!(log.contains("resuming"), "the resubmitted expert started over:\n{log}");
    assert_eq!(mean_losses(&run), mean_losses(&local));
}
