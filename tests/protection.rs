//! Runs that protect themselves: one writer per folder (a second is refused, a SIGKILLed
//! holder leaves no lock), a loss spike skipped and then stopped with the last good
//! checkpoint named, the checkpoints kept, and a corrupted checkpoint caught when loaded.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use btx::checkpoint::{self, checkpoint_steps, integrity};
use btx::config::to_ron;
use btx::eval::{evaluate, mean_loss};
use btx::merge::MergeInput;
use btx::run_lock::{FolderLock, RECIPE_LOCK, STAGE_LOCK};
use btx::train::{TrainConfig, TrainOptions, train};
use btx::data::load_domains;

use crate::common::*;

fn options(out: &Path, resume: bool, stop_after: Option<usize>) -> TrainOptions {
    TrainOptions { out: out.to_path_buf(), resume, progress: false, stop_after }
}

fn write_config(dir: &Path, config: &TrainConfig) -> std::path::PathBuf {
    let path = dir.join("train.ron");
    std::fs::write(&path, to_ron(config).unwrap()).unwrap();
    path
}

fn step_lines(run: &Path) -> Vec<usize> {
    btx::train::metrics::read_steps(&run.join("metrics.jsonl")).unwrap().iter().map(|s| s.step).collect()
}

/// A run of `steps` steps checkpointed every 5, trained into `dir/run` and stopped after
/// `stop_after` of them.
fn stopped_run(dir: &Path, steps: usize, stop_after: usize) -> (TrainConfig, std::path::PathBuf) {
    let mut config = tiny_train_config(dir, steps);
    config.checkpoint_every = 5;
    let run = dir.join("run");
    train(&config, "test", &cpu_selected(), &options(&run, false, Some(stop_after))).unwrap();
    (config, run)
}

fn sorted_steps(run: &Path) -> Vec<usize> {
    let mut steps: Vec<usize> = checkpoint_steps(run).into_iter().map(|(s, _)| s).collect();
    steps.sort_unstable();
    steps
}

#[test]
fn a_second_writer_is_refused_and_a_killed_holder_leaves_no_lock() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train_config(dir.path(), 1_000_000);
    config.checkpoint_every = 2;
    let config_path = write_config(dir.path(), &config);
    let run = dir.path().join("run");
    let args = ["train", "--config", config_path.to_str().unwrap(), "--out", run.to_str().unwrap(), "--device", "cpu"];
    let mut holder = Command::new(env!("CARGO_BIN_EXE_btx")).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let started = Instant::now();
    while checkpoint::latest_checkpoint(&run).is_none() {
        assert!(holder.try_wait().unwrap().is_none(), "the first writer ended early");
        assert!(started.elapsed() < Duration::from_secs(120), "the first writer wrote no checkpoint");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The second writer stops at once, naming the first, and leaves its files alone.
    let (ok, err) = run_btx(&[&args[..], &["--resume"]].concat(), dir.path());
    assert!(!ok, "a second writer ran");
    assert!(err.contains("is in use") && err.contains(&format!("process {}", holder.id())), "{err}");
    let written = step_lines(&run).len();
    std::thread::sleep(Duration::from_millis(500));
    assert!(holder.try_wait().unwrap().is_none(), "the first writer stopped");
    assert!(step_lines(&run).len() > written, "the first writer stopped writing metrics");

    // SIGKILL: the OS releases the lock; the run resumes, and its metrics are one run.
    holder.kill().unwrap();
    holder.wait().unwrap();
    let resumed_from = checkpoint::read_train_state(&checkpoint::latest_checkpoint(&run).unwrap()).unwrap().step;
    let summary = train(&config, "test", &cpu_selected(), &options(&run, true, Some(3))).unwrap();
    assert_eq!(summary.state.step, resumed_from + 3);
    assert_eq!(step_lines(&run), (1..=resumed_from + 3).collect::<Vec<_>>());
}

/// A one-expert recipe over a slice of the English corpus, at learning rate `lr`.
fn tiny_recipe(dir: &Path, lr: f64, seed_steps: usize, extra: &str) -> std::path::PathBuf {
    let english = small_corpus(dir, "english.txt", 20_000);
    let recipe = dir.join("recipe.ron");
    let text = format!(
        r#"(
    model: (vocab_size: 4096, d_model: 32, n_layers: 1, n_heads: 4, d_ff: 64, max_seq_len: 64),
    tokenizer: "{}",
    seq_len: 32,
    domains: [(name: "english", source: File("{}"))],
    optimizer: (lr: {lr:?}, warmup_steps: 2),
    batch_size: 2,
    seed_model: Train(steps: {seed_steps}, mixture: [("english", 1.0)]),
    experts: [(name: "en", data: [("english", 1.0)], steps: 2)],
    merges: [(name: "btx", method: Btx)],
    finetune: (steps: 2),{extra}
)"#,
        repo_root().join("assets/tokenizer.json").display(),
        english.display()
    );
    std::fs::write(&recipe, text).unwrap();
    recipe
}

/// A recipe run and a recipe stage each refuse a folder another process holds.
#[test]
fn recipe_runs_and_stages_take_one_writer_each() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), 1e-2, 2, "");
    let run = dir.path().join("run");
    let r = recipe.to_str().unwrap();

    let held = FolderLock::acquire(&run, RECIPE_LOCK).unwrap();
    let (ok, err) = run_btx(&["recipe", "run", r, "--out", run.to_str().unwrap(), "--device", "cpu"], dir.path());
    assert!(!ok && err.contains(&format!("process {}", std::process::id())) && err.contains(&held.path().display().to_string()), "{err}");
    assert!(!run.join("seed").exists(), "the refused run started a stage");
    drop(held);

    // The first stage (the domain's tokenization): its inputs exist, its folder is held.
    let _stage = FolderLock::acquire(&run.join("data/english"), STAGE_LOCK).unwrap();
    let (ok, err) = run_btx(&["recipe", "stage", r, "--out", run.to_str().unwrap(), "--stage", "data/english", "--device", "cpu"], dir.path());
    assert!(!ok && err.contains("is in use") && err.contains(&format!("process {}", std::process::id())), "{err}");
    assert!(!run.join("data/english/stage.key").exists(), "the refused stage wrote into its folder");
    // A stage whose inputs are not made yet says which.
    let (ok, err) = run_btx(&["recipe", "stage", r, "--out", run.to_str().unwrap(), "--stage", "seed", "--device", "cpu"], dir.path());
    assert!(!ok && err.contains("data/english/tokens/meta.json does not exist") && err.contains("must run first"), "{err}");
}

/// A recipe whose seed diverges at lr 1.0: the stage fails with the guard's message (with the
/// recipe's own `spike_guard`), and `recipe status` shows it.
#[test]
fn a_diverging_recipe_stage_fails_and_status_shows_why() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = tiny_recipe(dir.path(), 1.0, 200, "\n    spike_guard: (patience: 3),");
    let (r, run) = (recipe.to_str().unwrap(), dir.path().join("run"));
    let (ok, err) = run_btx(&["recipe", "run", r, "--out", run.to_str().unwrap(), "--device", "cpu"], dir.path());
    assert!(!ok && err.contains("stage seed failed") && err.contains("training stopped at step"), "{err}");
    assert!(err.contains("(spike_guard.patience: 3)"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_btx")).args(["recipe", "status", r, "--out", run.to_str().unwrap()]).output().unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    let seed = status.lines().find(|l| l.starts_with("seed ")).unwrap_or_default();
    assert!(seed.contains("failed (will resume): error: training stopped at step"), "{status}");
}

/// The learning rate of a run jumps from 1e-2 to 1.0 at step 20 (its checkpoint's config is
/// edited, and the checkpoint sealed again, as a user resuming with another lr would need):
/// the first update at 1.0 is applied (nothing could tell it apart), every update after it
/// sees a spiked loss and is skipped, and after `patience` of them the run stops, naming the
/// checkpoint of step 20 as the last good one. No checkpoint is written while skipping.
#[test]
fn a_learning_rate_jump_is_skipped_then_stopped_naming_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (config, run) = stopped_run(dir.path(), 40, 20);
    assert_eq!(sorted_steps(&run), vec![15, 20], "keep_last 2");
    assert!(step_lines(&run).len() == 20);

    let mut jumped = config.clone();
    jumped.optimizer.lr = 1.0;
    jumped.optimizer.min_lr_ratio = 1.0;
    let ckpt = checkpoint::latest_checkpoint(&run).unwrap();
    std::fs::write(ckpt.join(checkpoint::TRAIN_CONFIG_FILE), to_ron(&jumped).unwrap()).unwrap();
    integrity::seal(&ckpt).unwrap();

    let err = train(&jumped, "jumped.ron", &cpu_selected(), &options(&run, true, None)).err().expect("the diverging run stops").to_string();
    let patience = jumped.spike_guard.patience;
    assert!(err.contains(&format!("training stopped at step {}", 21 + patience)), "{err}");
    assert!(err.contains(&format!("The updates of steps 22-{} were all skipped", 21 + patience)), "{err}");
    assert!(err.contains(&format!("The last good checkpoint is {} (step 20); older ones kept: steps 15", ckpt.display())), "{err}");
    assert!(err.contains("jumped.ron"), "{err}");

    let steps = btx::train::metrics::read_steps(&run.join("metrics.jsonl")).unwrap();
    let skipped: Vec<usize> = steps.iter().filter(|s| s.skipped.is_some()).map(|s| s.step).collect();
    assert_eq!(skipped, (22..=21 + patience).collect::<Vec<_>>());
    assert!(steps.last().is_some_and(|s| s.stopped && s.step == 21 + patience));
    assert_eq!(sorted_steps(&run), vec![15, 20], "a checkpoint was written while skipping (step 25 is a checkpoint step)");

    // The named checkpoint loads, and its model is finite and as good as it was.
    let device = cpu();
    let (_, model) = checkpoint::load_model(&ckpt, &device).unwrap();
    let loss = mean_loss(&evaluate(&model, &load_domains(&config.data, config.model.vocab_size, "test").unwrap(), 8, 2, &device));
    assert!(loss.is_finite() && loss < 7.0, "mean validation loss {loss}");
}

#[test]
fn keep_last_and_keep_every_choose_the_checkpoints_that_survive() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train_config(dir.path(), 20);
    config.checkpoint_every = 2;
    let run = dir.path().join("default");
    train(&config, "test", &cpu_selected(), &options(&run, false, None)).unwrap();
    assert_eq!(sorted_steps(&run), vec![18, 20]);

    config.keep_last = 3;
    config.keep_every = Some(8);
    let run = dir.path().join("kept");
    train(&config, "test", &cpu_selected(), &options(&run, false, None)).unwrap();
    assert_eq!(sorted_steps(&run), vec![8, 16, 18, 20]);
    // Every kept checkpoint is whole and sealed.
    for (_, ckpt) in checkpoint_steps(&run) {
        integrity::verify(&ckpt).unwrap();
        assert!(ckpt.join(integrity::CHECKSUMS_FILE).is_file());
    }

    config.keep_last = 0;
    let err = config.validate("t.ron").unwrap_err().to_string();
    assert!(err.contains("t.ron: field `keep_last` must be at least 1"), "{err}");
}

/// One byte flipped in the weights of a finished checkpoint: a resume and a merge refuse it,
/// naming the file; nothing is written by the merge.
#[test]
fn a_flipped_byte_in_a_checkpoint_is_caught_on_resume_and_on_merge() {
    let dir = tempfile::tempdir().unwrap();
    let (config, run) = stopped_run(dir.path(), 10, 6);
    let ckpt = checkpoint::latest_checkpoint(&run).unwrap();
    let weights = ckpt.join(checkpoint::MODEL_FILE);
    let mut bytes = std::fs::read(&weights).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&weights, bytes).unwrap();
    let corrupt = format!("checkpoint file {} is corrupt", weights.display());

    let err = train(&config, "test", &cpu_selected(), &options(&run, true, None)).err().expect("resume refused").to_string();
    assert!(err.contains(&corrupt), "{err}");
    let err = MergeInput::load(&run).err().expect("merge input refused").to_string();
    assert!(err.contains(&corrupt), "{err}");
    let out = dir.path().join("merged");
    let (ok, err) = run_btx(&["merge", "--method", "average", "--experts", run.to_str().unwrap(), run.to_str().unwrap(), "--out", out.to_str().unwrap()], dir.path());
    assert!(!ok && err.contains(&corrupt), "{err}");
    assert!(!out.exists(), "a refused merge wrote its output");
}

/// The stderr and exit status of `btx devices` when a thread panics with `message` while the
/// main one waits forever (as wgpu-hal's GL polling thread did).
fn panicking_thread(message: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_btx"))
        .args(["devices"])
        .env("BTX_TEST_PANIC_IN_THREAD", message)
        .env_remove("RUST_BACKTRACE")
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("the process hung after a thread panicked");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn a_panic_on_any_thread_ends_the_process_with_a_clear_error() {
    // The process must end, non-zero, naming the thread and the message.
    let (code, stderr) = panicking_thread("1");
    assert_eq!(code, Some(101), "{stderr}");
    assert!(stderr.contains("thread `test-panic` panicked") && stderr.contains("BTX_TEST_PANIC_IN_THREAD is set: 1"), "{stderr}");
    assert!(!stderr.contains("hint:"), "{stderr}");
    // wgpu-hal's GL context timeout gets its meaning and what avoids it.
    let (code, stderr) = panicking_thread("Could not lock adapter context. This is most-likely a deadlock.");
    assert_eq!(code, Some(101), "{stderr}");
    assert!(stderr.contains("hint: WGPU's OpenGL backend waited more than 6 s for its GL context"), "{stderr}");
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
}

/// Peak resident memory of a `btx` run that ends, in KB (wait4's rusage: that child alone).
pub fn peak_kb_of(command: &mut Command) -> i64 {
    let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill; the pid is our child's.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert!(pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "btx train failed");
    usage.ru_maxrss
}

/// Memory that stays flat: a CPU run's peak after 200 steps is within 5% of its peak after
/// 20 (each step's buffers are freed and reused, nothing accumulates per step).
#[test]
fn peak_memory_after_200_steps_is_within_5_percent_of_the_peak_after_20() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_train_config(dir.path(), 20);
    config.model.d_model = 64;
    config.batch_size = 4;
    config.data.seq_len = 64;
    config.checkpoint_every = 1000;
    let mut peaks = Vec::new();
    for steps in [20, 200] {
        config.steps = steps;
        let path = dir.path().join(format!("train-{steps}.ron"));
        std::fs::write(&path, to_ron(&config).unwrap()).unwrap();
        let out = dir.path().join(format!("run-{steps}"));
        let mut command = Command::new(env!("CARGO_BIN_EXE_btx"));
        command.args(["train", "--config", path.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", "cpu"]);
        peaks.push(peak_kb_of(&mut command));
    }
    let (short, long) = (peaks[0] as f64, peaks[1] as f64);
    assert!(long <= short * 1.05, "peak memory grew from {short} KB after 20 steps to {long} KB after 200");
}
