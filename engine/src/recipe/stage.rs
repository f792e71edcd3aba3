//! One stage of a recipe: a `btx` subcommand run as its own OS process, in its own folder,
//! recorded by a manifest. A stage whose manifest matches (same command, same config, same
//! input contents) is skipped; an interrupted one resumes; a changed one starts over.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkpoint::{MODEL_FILE, latest_checkpoint, read_train_state};
use crate::fsutil::{sha256_file, write_atomic};
use super::stage_id::StageId;
use crate::run_lock::{FolderLock, STAGE_LOCK};

pub const MANIFEST_FILE: &str = "manifest.json";
const KEY_FILE: &str = "stage.key";
/// The error of the stage's last run, if it failed (removed when it runs again).
pub const FAILURE_FILE: &str = "failed.txt";
const LOG_FILE: &str = "log.txt";
pub const CONFIG_FILE: &str = "stage.ron";
/// An evaluation stage's task scores (lm-evaluation-harness's results shape), beside eval.json.
pub const TASKS_JSON: &str = "tasks.json";
/// The files a stage keeps in its folder while its command runs. A command that writes its
/// result as the whole folder (a merge, a data stage) replaces the folder but keeps these
/// (the stage lists them in the folder's `fsutil::KEEP_LIST`): they belong to the stage (its
/// lock is held, its log open), not to the result.
const STAGE_FILES: [&str; 5] = [KEY_FILE, FAILURE_FILE, LOG_FILE, CONFIG_FILE, STAGE_LOCK];

#[derive(Debug, Clone)]
pub struct Stage {
    pub id: StageId,
    pub dir: PathBuf,
    /// Arguments of the `btx` subcommand.
    pub args: Vec<String>,
    /// A config file the stage reads, written to `dir/stage.ron` before it runs.
    pub config: Option<String>,
    /// Files whose contents the result depends on (checkpoints, data, tokenizer).
    pub inputs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputHash {
    pub path: PathBuf,
    pub sha256: String,
    /// Size and modification time (ns since the epoch) when hashed: while both are the same,
    /// the manifest's hash is reused instead of reading the file again (a data stage's
    /// inputs can be many GB, and every `recipe run` and `status` computes every key).
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub modified_ns: u64,
}

/// A file's size and modification time in ns (0 where the platform has none).
fn file_stamp(path: &Path) -> Result<(u64, u64)> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let modified = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos() as u64);
    Ok((meta.len(), modified))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub stage: String,
    pub key: String,
    pub command: Vec<String>,
    pub config: Option<String>,
    pub inputs: Vec<InputHash>,
    /// Tokens trained on in this stage (0 for merges and evaluations).
    pub tokens: u64,
    /// Training FLOPs of this stage (6 x active params x tokens, plus attention).
    pub train_flops: f64,
    pub wall_time_s: f64,
    pub device: String,
    /// The GPU adapter the run gave this stage (its index in `--devices`' list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<usize>,
}

impl Manifest {
    /// The training config of a training stage (None for the others).
    pub fn train_config(&self) -> Option<crate::train::TrainConfig> {
        crate::config::parse_ron(self.config.as_deref()?, &self.stage).ok()
    }

    /// A training stage's peak learning rate, as the report's stage table gives it: the
    /// routers' multiple beside it when they learn faster.
    pub fn peak_lr(&self) -> Option<String> {
        let o = self.train_config()?.optimizer;
        Some(if o.router_lr_multiplier == 1.0 { format!("{:.1e}", o.lr) } else { format!("{:.1e} (routers x{})", o.lr, o.router_lr_multiplier) })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageState {
    /// Its manifest matches: nothing to do.
    Complete,
    /// Started with the same key but not finished: it resumes.
    Partial,
    /// Its inputs or config changed since it ran: it starts over.
    Stale,
    Pending,
}

impl Stage {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(CONFIG_FILE)
    }

    fn input_hashes(&self) -> Result<Vec<InputHash>> {
        let known = self.manifest().map(|m| m.inputs).unwrap_or_default();
        self.inputs
            .iter()
            .map(|p| {
                if !p.exists() {
                    bail!("stage {}: its input {} does not exist (the stage that makes it must run first)", self.id, p.display());
                }
                let (bytes, modified_ns) = file_stamp(p)?;
                let cached = known.iter().find(|k| k.path == *p && k.bytes == bytes && k.modified_ns == modified_ns && modified_ns != 0);
                let sha256 = match cached {
                    Some(k) => k.sha256.clone(),
                    None => sha256_file(p)?,
                };
                Ok(InputHash { path: p.clone(), sha256, bytes, modified_ns })
            })
            .collect()
    }

    /// The content key: command, config and input contents.
    pub fn key(&self) -> Result<(String, Vec<InputHash>)> {
        let inputs = self.input_hashes()?;
        let mut hasher = Sha256::new();
        for a in without_device_args(&self.args) {
            hasher.update(a.as_bytes());
            hasher.update([0]);
        }
        hasher.update(self.config.as_deref().unwrap_or("").as_bytes());
        for i in &inputs {
            hasher.update(i.sha256.as_bytes());
        }
        Ok((format!("{:x}", hasher.finalize()), inputs))
    }

    pub fn manifest(&self) -> Option<Manifest> {
        let text = std::fs::read_to_string(self.dir.join(MANIFEST_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The error its last run stopped with, if it failed and has not run since.
    pub fn failure(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join(FAILURE_FILE)).ok()
    }

    pub fn state(&self) -> StageState {
        let Ok((key, _)) = self.key() else { return StageState::Pending };
        if self.manifest().is_some_and(|m| m.key == key) {
            return StageState::Complete;
        }
        match std::fs::read_to_string(self.dir.join(KEY_FILE)) {
            Ok(k) if k.trim() == key => StageState::Partial,
            Ok(_) => StageState::Stale,
            Err(_) if self.dir.join(MANIFEST_FILE).exists() => StageState::Stale,
            Err(_) => StageState::Pending,
        }
    }

    /// A progress bar for a training stage (its config names the steps).
    fn progress_bar(&self, progress: &indicatif::MultiProgress) -> Option<indicatif::ProgressBar> {
        let config: crate::train::TrainConfig = crate::config::parse_ron(self.config.as_deref()?, "stage").ok()?;
        let bar = progress.add(indicatif::ProgressBar::new(config.steps as u64));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix:<24} [{bar:30}] {pos}/{len} steps {elapsed_precise} ETA {eta_precise}")
                .ok()?
                .progress_chars("=> "),
        );
        bar.set_prefix(self.id.to_string());
        Some(bar)
    }

    /// Runs the stage's command (on `adapter` when the run gives it one), unless its manifest
    /// says it is up to date; returns its manifest.
    pub fn run(&self, btx: &Path, progress: &indicatif::MultiProgress, adapter: Option<&super::gpus::Assignment>) -> Result<Manifest> {
        let (key, inputs) = self.key()?;
        if let Some(m) = self.manifest().filter(|m| m.key == key) {
            progress.suspend(|| eprintln!("[{}] up to date, skipped", self.id));
            return Ok(m);
        }
        // One process per stage folder (a Slurm job resubmitted while the old one runs, two
        // recipe runs sharing stages): the second stops here, naming the first.
        let _lock = FolderLock::acquire(&self.dir, STAGE_LOCK)?;
        let resuming = std::fs::read_to_string(self.dir.join(KEY_FILE)).is_ok_and(|k| k.trim() == key);
        if !resuming {
            clear_stage_dir(&self.dir)?;
        }
        let _ = std::fs::remove_file(self.dir.join(FAILURE_FILE));
        // A command that replaces this folder with its result keeps the stage's own files.
        let slurm = slurm_files(&self.dir);
        let kept: Vec<&str> = STAGE_FILES.iter().copied().chain(slurm.iter().map(String::as_str)).collect();
        crate::fsutil::keep_on_replace(&self.dir, &kept)?;
        write_atomic(&self.dir.join(KEY_FILE), key.as_bytes())?;
        if let Some(config) = &self.config {
            write_atomic(&self.config_path(), config.as_bytes())?;
        }
        progress.suspend(|| eprintln!("[{}] {}", self.id, if resuming { "resuming" } else { "running" }));
        let log_path = self.dir.join(LOG_FILE);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let started = Instant::now();
        let mut command = Command::new(btx);
        if let Some(a) = adapter {
            command.env(super::gpus::ADAPTER_ENV, &a.selector);
        }
        let mut child = command
            .args(&self.args)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("cannot run {}", btx.display()))?;
        let bar = self.progress_bar(progress);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if let Some(bar) = &bar {
                bar.set_position(last_step(&self.dir.join("metrics.jsonl")));
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        };
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        if !status.success() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect();
            // What `recipe status` shows: the stage's own error, else how its process ended.
            let error = log.rfind("error: ").map(|i| log[i..].trim_end().to_string()).unwrap_or_else(|| format!("its process ended {status}"));
            write_atomic(&self.dir.join(FAILURE_FILE), error.as_bytes())?;
            bail!("stage {} failed ({status}); its log {}:\n{}", self.id, log_path.display(), tail.join("\n"));
        }
        let (tokens, train_flops, wall_time_s, device) = match latest_checkpoint(&self.dir).and_then(|c| read_train_state(&c).ok()) {
            Some(s) => (s.tokens_seen, s.train_flops, s.wall_time_s, s.device),
            None => (0, 0.0, started.elapsed().as_secs_f64(), logged_device(&log_path)),
        };
        let manifest = Manifest {
            stage: self.id.to_string(),
            key,
            command: std::iter::once("btx".to_string()).chain(self.args.iter().cloned()).collect(),
            config: self.config.clone(),
            inputs,
            tokens,
            train_flops,
            wall_time_s,
            device,
            adapter: adapter.map(|a| a.index),
        };
        write_atomic(&self.dir.join(MANIFEST_FILE), serde_json::to_string_pretty(&manifest)?.as_bytes())?;
        progress.suspend(|| eprintln!("[{}] done in {:.1} s", self.id, started.elapsed().as_secs_f64()));
        Ok(manifest)
    }
}

/// The arguments that decide a stage's result: all but the device choice, so a stage
/// finished on one device is not redone because the next run names another.
fn without_device_args(args: &[String]) -> Vec<&String> {
    let mut kept = Vec::new();
    let mut skip_value = false;
    for a in args {
        if std::mem::take(&mut skip_value) || a == "--allow-software-gpu" {
            continue;
        }
        if a == "--device" {
            skip_value = true;
            continue;
        }
        kept.push(a);
    }
    kept
}

/// Whether a file of a stage folder is the scheduler's (`slurm*`: the job's script, record and
/// output, which the running job is writing).
fn is_slurm_file(name: &str) -> bool {
    name.starts_with("slurm")
}

/// A Slurm job's files in its stage folder.
fn slurm_files(dir: &Path) -> Vec<String> {
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
    entries.map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| is_slurm_file(n)).collect()
}

/// Empties a stage folder for a fresh start, keeping the scheduler's records and the stage's
/// lock (removing a held lock file would let a second process lock a new one).
fn clear_stage_dir(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot clear {}", dir.display()))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_slurm_file(&name) || name == STAGE_LOCK {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        removed.with_context(|| format!("cannot clear {}", path.display()))?;
    }
    Ok(())
}

/// The device a stage's process said it ran on (its `device: ...` line); merges need none.
fn logged_device(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().rev().find_map(|l| l.strip_prefix("device: ")).unwrap_or("host (no device)").to_string()
}

/// The last step a training stage logged.
fn last_step(metrics: &Path) -> u64 {
    crate::train::metrics::read_metrics(metrics).ok().and_then(|m| m.last().map(|r| r.step() as u64)).unwrap_or(0)
}

/// The weights file of a stage's output (a run folder's latest checkpoint, or a folder that
/// is itself a checkpoint).
pub fn model_file(dir: &Path) -> PathBuf {
    latest_checkpoint(dir).unwrap_or_else(|| dir.to_path_buf()).join(MODEL_FILE)
}
