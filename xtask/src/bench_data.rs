//! `cargo xtask bench data [--corpus FILE.jsonl] [--pairs N] [--tokenizer T]`: the data
//! layer's figures, each the median of paired runs (engine and reference alternating).
//!
//! 1. Preparation: `btx data prepare` against Hugging Face's `tokenizers` Python package
//!    (bench/reference/prepare_bench.py) on the same JSONL corpus, tokenizer and cores:
//!    MB/s, tokens/s, their ratio, and each one's peak resident memory.
//! 2. A training stage's start: `btx train` of one step on a 1 GB prepared domain against
//!    one on a 1 MB domain: peak resident memory and the time to its first step.
//!
//! Without `--corpus`, bench/reference/make_corpus.py collects 600 MB of real documents
//! (source code, documentation, licences) found on the machine.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::flag;

/// A finished child: wall seconds, peak resident memory in MB, and what it printed.
pub(crate) struct Measured {
    pub(crate) seconds: f64,
    pub(crate) peak_mb: f64,
    pub(crate) output: String,
}

/// Runs `command` and measures it (peak memory from wait4's rusage: this child alone).
pub(crate) fn measure(command: &mut Command) -> Result<Measured> {
    let out = std::env::temp_dir().join(format!("btx-bench-out-{}.txt", std::process::id()));
    let file = std::fs::File::create(&out)?;
    let started = Instant::now();
    let child = command.stdout(file.try_clone()?).stderr(file).spawn().with_context(|| format!("cannot run {command:?}"))?;
    let (status, peak_kb) = wait_with_rusage(child)?;
    let seconds = started.elapsed().as_secs_f64();
    let output = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    if !status {
        bail!("{command:?} failed:\n{output}");
    }
    Ok(Measured { seconds, peak_mb: peak_kb as f64 / 1024.0, output })
}

#[cfg(unix)]
fn wait_with_rusage(child: std::process::Child) -> Result<(bool, i64)> {
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill; the pid is our child's.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    if pid < 0 {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    Ok((libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, usage.ru_maxrss))
}

#[cfg(not(unix))]
fn wait_with_rusage(mut child: std::process::Child) -> Result<(bool, i64)> {
    Ok((child.wait()?.success(), 0))
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 }
}

fn range(values: &[f64]) -> (f64, f64) {
    (values.iter().cloned().fold(f64::INFINITY, f64::min), values.iter().cloned().fold(f64::NEG_INFINITY, f64::max))
}

/// The number after `label` in `text` (e.g. "first step done after 0.53 s").
fn number_after(text: &str, label: &str) -> Option<f64> {
    let rest = &text[text.find(label)? + label.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

pub fn run(btx: &Path, args: &[String]) -> Result<()> {
    let pairs: usize = flag(args, "--pairs").unwrap_or("3").parse().context("--pairs")?;
    let tokenizer = flag(args, "--tokenizer").unwrap_or("assets/tokenizer.json");
    let work = std::env::temp_dir().join(format!("btx-bench-data-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let corpus = match flag(args, "--corpus") {
        Some(c) => PathBuf::from(c),
        None => {
            let corpus = std::env::temp_dir().join("btx-bench-corpus.jsonl");
            if !corpus.is_file() {
                let status = Command::new("python3").args(["bench/reference/make_corpus.py", "--out", corpus.to_str().unwrap(), "--mb", "600"]).status()?;
                if !status.success() {
                    bail!("bench/reference/make_corpus.py failed");
                }
            }
            corpus
        }
    };
    let mb = std::fs::metadata(&corpus)?.len() as f64 / 1e6;
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("corpus {} ({mb:.1} MB), tokenizer {tokenizer}, {cores} cores ({})", corpus.display(), cpu.unwrap_or_else(|| "cpu unknown".into()));

    // 1. Preparation, engine and reference alternating.
    let prepared = work.join("prepared");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    println!("\n{:<6} {:>10} {:>10} {:>12} {:>10} | {:>10} {:>10} {:>12} {:>10} | {:>6}", "pair", "btx s", "MB/s", "tokens/s", "peak MB", "py s", "MB/s", "tokens/s", "peak MB", "ratio");
    for pair in 0..pairs {
        let engine = measure(Command::new(btx).args(["data", "prepare", corpus.to_str().unwrap(), "--tokenizer", tokenizer, "--out", prepared.to_str().unwrap()]))?;
        let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(prepared.join("meta.json"))?)?;
        let engine_tokens = meta["train"]["tokens"].as_f64().unwrap_or(0.0) + meta["val"]["tokens"].as_f64().unwrap_or(0.0);
        let reference = measure(Command::new("python3").args(["bench/reference/prepare_bench.py", corpus.to_str().unwrap(), "--tokenizer", tokenizer, "--out", work.join("reference.bin").to_str().unwrap()]))?;
        let printed: serde_json::Value = serde_json::from_str(reference.output.lines().last().unwrap_or("{}")).context("prepare_bench.py's output")?;
        let reference_tokens = printed["tokens"].as_f64().unwrap_or(0.0);
        let ratio = reference.seconds / engine.seconds;
        println!(
            "{pair:<6} {:>10.1} {:>10.1} {:>12.0} {:>10.0} | {:>10.1} {:>10.1} {:>12.0} {:>10.0} | {:>6.2}",
            engine.seconds,
            mb / engine.seconds,
            engine_tokens / engine.seconds,
            engine.peak_mb,
            reference.seconds,
            mb / reference.seconds,
            reference_tokens / reference.seconds,
            reference.peak_mb,
            ratio
        );
        ours.push((engine.seconds, engine.peak_mb, engine_tokens));
        theirs.push((reference.seconds, reference.peak_mb, reference_tokens));
    }
    let ratios: Vec<f64> = ours.iter().zip(&theirs).map(|(o, t)| t.0 / o.0).collect();
    let (lo, hi) = range(&ratios);
    let engine_s: Vec<f64> = ours.iter().map(|o| o.0).collect();
    let engine_peak: Vec<f64> = ours.iter().map(|o| o.1).collect();
    println!(
        "preparation: btx {:.1} MB/s, {:.0} tokens/s, peak {:.0} MB; speed ratio btx/reference median {:.2} (min {lo:.2}, max {hi:.2}) over {pairs} pairs",
        mb / median(&engine_s),
        ours[0].2 / median(&engine_s),
        median(&engine_peak),
        median(&ratios)
    );

    // 2. A training stage's start on a 1 GB and a 1 MB prepared domain.
    let big = work.join("big");
    tile_to(&prepared, &big, 1 << 30)?;
    let small_jsonl = work.join("small.jsonl");
    let head: String = std::fs::read_to_string(&corpus).ok().map(|s| first_bytes(&s, 1 << 20)).unwrap_or_default();
    std::fs::write(&small_jsonl, head)?;
    let small = work.join("small");
    measure(Command::new(btx).args(["data", "prepare", small_jsonl.to_str().unwrap(), "--tokenizer", tokenizer, "--out", small.to_str().unwrap(), "--val-fraction", "0.05"]))?;
    println!("\n{:<6} {:>14} {:>14} | {:>14} {:>14}", "pair", "1 GB: first s", "peak MB", "1 MB: first s", "peak MB");
    let (mut big_runs, mut small_runs) = (Vec::new(), Vec::new());
    for pair in 0..pairs {
        let mut row = Vec::new();
        for (data, runs) in [(&big, &mut big_runs), (&small, &mut small_runs)] {
            let config = work.join("train.ron");
            std::fs::write(&config, train_config(tokenizer, data))?;
            let out = work.join("run");
            let _ = std::fs::remove_dir_all(&out);
            let m = measure(Command::new(btx).args(["train", "--config", config.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", "cpu", "--no-progress"]))?;
            let first = number_after(&m.output, "first step done after").context("btx train printed no first step")?;
            runs.push((first, m.peak_mb));
            row.push((first, m.peak_mb));
        }
        println!("{pair:<6} {:>14.2} {:>14.0} | {:>14.2} {:>14.0}", row[0].0, row[0].1, row[1].0, row[1].1);
    }
    let med = |runs: &[(f64, f64)], i: usize| median(&runs.iter().map(|r| if i == 0 { r.0 } else { r.1 }).collect::<Vec<_>>());
    println!(
        "training start: 1 GB domain {:.2} s to the first step, peak {:.0} MB; 1 MB domain {:.2} s, {:.0} MB (medians of {pairs}); differences {:+.2} s, {:+.0} MB",
        med(&big_runs, 0),
        med(&big_runs, 1),
        med(&small_runs, 0),
        med(&small_runs, 1),
        med(&big_runs, 0) - med(&small_runs, 0),
        med(&big_runs, 1) - med(&small_runs, 1)
    );
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// The first whole lines of `text` up to `bytes`.
fn first_bytes(text: &str, bytes: usize) -> String {
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        if out.len() + line.len() > bytes && !out.is_empty() {
            break;
        }
        out.push_str(line);
    }
    out
}

/// A prepared folder whose training stream is `from`'s repeated to at least `bytes` (the
/// index and validation stream copied; meta.json's counts made to match).
fn tile_to(from: &Path, to: &Path, bytes: u64) -> Result<()> {
    std::fs::create_dir_all(to)?;
    let train = std::fs::read(from.join("train.bin"))?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(to.join("train.bin"))?);
    let mut written = 0u64;
    while written < bytes {
        std::io::Write::write_all(&mut out, &train)?;
        written += train.len() as u64;
    }
    std::io::Write::flush(&mut out)?;
    for f in ["train.idx", "val.bin", "val.idx"] {
        std::fs::copy(from.join(f), to.join(f))?;
    }
    let mut meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(from.join("meta.json"))?)?;
    let width = if meta["dtype"] == "u16" { 2 } else { 4 };
    meta["train"]["tokens"] = (written / width).into();
    meta["inputs"] = serde_json::json!([]);
    std::fs::write(to.join("meta.json"), serde_json::to_string_pretty(&meta)?)?;
    Ok(())
}

/// One step of dense-tiny's model on one prepared domain.
fn train_config(tokenizer: &str, data: &Path) -> String {
    let tokenizer = std::fs::canonicalize(tokenizer).map(|p| p.display().to_string()).unwrap_or_else(|_| tokenizer.to_string());
    format!(
        r#"(
    model: (vocab_size: 4096, d_model: 128, n_layers: 4, n_heads: 4, n_kv_heads: 2, d_ff: 384, max_seq_len: 256),
    data: (tokenizer: "{tokenizer}", seq_len: 128, domains: [(name: "corpus", source: Prepared("{}"))]),
    optimizer: (lr: 3e-3, warmup_steps: 1),
    steps: 1,
    batch_size: 16,
    checkpoint_every: 1,
    eval_batches: 1,
)"#,
        data.display()
    )
}
