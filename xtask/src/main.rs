//! `cargo xtask`: runs the engine's jobs. It builds the `btx` binary (release) and decides
//! what to run and in which order; every stage itself is a `btx` subcommand.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench_data;
mod bench_eval;
mod bench_real;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Run the BTX engine's jobs")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Train a dense model from a training config (RON), then evaluate it per domain.
    Train {
        config: PathBuf,
        /// auto (first hardware GPU, else CPU), cpu, wgpu, vulkan, gl, metal, dx12 (a software
        /// adapter only with BTX_ALLOW_SOFTWARE_GPU=1).
        #[arg(long, default_value = "auto")]
        device: String,
        /// Run folder (default: runs/<config name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Start over: delete the run folder first (by default an interrupted run resumes).
        #[arg(long)]
        fresh: bool,
    },
    /// Recipes: `cargo xtask recipe run recipes/NAME.ron [--jobs N] [--device D] [--out DIR]`,
    /// `cargo xtask recipe status recipes/NAME.ron`.
    Recipe {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks that print their figures: `cargo xtask bench moe [--device D] [...]`
    /// (see `btx bench --help`).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run any `btx` subcommand with the release binary, e.g. `cargo xtask btx devices`.
    Btx {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.command {
        Task::Train { config, device, out, fresh } => {
            let name = config.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
            let out = out.unwrap_or_else(|| Path::new("runs").join(name));
            if fresh && out.exists() {
                std::fs::remove_dir_all(&out).with_context(|| format!("cannot remove {}", out.display()))?;
            }
            let btx = build_btx()?;
            let config = config.display().to_string();
            let out = out.display().to_string();
            run_btx(&btx, &["train", "--config", &config, "--out", &out, "--device", &device, "--resume"])?;
            run_btx(&btx, &["eval", "--checkpoint", &out, "--device", &device, "--json", &format!("{out}/eval.json")])
        }
        Task::Recipe { args } => {
            let btx = build_btx()?;
            let args: Vec<&str> = std::iter::once("recipe").chain(args.iter().map(String::as_str)).collect();
            run_btx(&btx, &args)
        }
        Task::Bench { args } => {
            // `--btx PATH`: time that binary (an older commit's, for a before/after) instead
            // of building this tree's; the flag is xtask's, so no benchmark sees it.
            let mut args = args;
            let btx = match args.iter().position(|a| a == "--btx") {
                Some(i) if i + 1 < args.len() => PathBuf::from(args.drain(i..i + 2).nth(1).unwrap_or_default()),
                Some(_) => bail!("--btx: expected the path of a btx binary"),
                None => build_btx()?,
            };
            match args.first().map(String::as_str) {
                Some("compare") => bench_compare(&btx, &args[1..]),
                Some("recipe") => bench_recipe(&btx, &args[1..]),
                Some("data") => bench_data::run(&btx, &args[1..]),
                Some("real") => bench_real::run(&btx, &args[1..]),
                Some("eval") => bench_eval::run(&btx, &args[1..]),
                _ => {
                    let args: Vec<&str> = std::iter::once("bench").chain(args.iter().map(String::as_str)).collect();
                    run_btx(&btx, &args)
                }
            }
        }
        Task::Btx { args } => {
            let btx = build_btx()?;
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_btx(&btx, &args)
        }
    }
}

/// The value of `--name` in `args`, if given.
pub(crate) fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

/// `cargo xtask bench compare [--config C] [--device D] [--torch-device cpu|cuda] [--dtype float32] [--pairs N] [--btx PATH]`:
/// the engine's training-step throughput and the PyTorch reference's, on the same device kind,
/// run alternately (engine, PyTorch, engine, ...) `--pairs` times (default 5), so that a
/// machine's drift hits both alike; prints each model's median ratio with its range, the CPU
/// and the vector instructions it offers.
fn bench_compare(btx: &Path, args: &[String]) -> Result<()> {
    let pairs: usize = flag(args, "--pairs").map_or(Ok(5), str::parse).context("--pairs: expected a number")?;
    let python = std::env::var("BTX_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_torch = Command::new(&python).args(["-c", "import torch"]).output().is_ok_and(|o| o.status.success());
    let mut runs = Vec::new();
    for pair in 0..pairs.max(1) {
        let engine = engine_bench(btx, args)?;
        if !has_torch {
            println!("\nPyTorch is not available to `{python}` (set BTX_PYTHON to an interpreter with torch): engine figures only.");
            return Ok(());
        }
        let torch = torch_bench(&python, args, &engine)?;
        eprintln!("pair {}/{pairs} done", pair + 1);
        runs.push((engine, torch));
    }
    let (engine, torch) = &runs[0];
    println!("\nCPU: {} ({}); engine device: {}", cpu_model(), cpu_vector_units(), engine["device"].as_str().unwrap_or("?"));
    println!("PyTorch {} on {} ({}, {} threads); {} alternating pairs", torch["torch"], torch["device"], torch["dtype"], torch["threads"], runs.len());
    println!("{:<6} {:>14} {:>14} {:>16} {:>16}", "model", "engine tok/s", "torch tok/s", "engine / torch", "ratio range");
    let mut results = Vec::new();
    let models: Vec<String> = engine["rows"].as_array().into_iter().flatten().map(|r| r["model"].as_str().unwrap_or("?").to_string()).collect();
    for (m, model) in models.iter().enumerate() {
        let rate = |v: &serde_json::Value| v["rows"][m]["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
        let (e, t): (Vec<f64>, Vec<f64>) = runs.iter().map(|(e, t)| (rate(e), rate(t))).unzip();
        let ratios: Vec<f64> = e.iter().zip(&t).map(|(a, b)| a / b).collect();
        let (lo, hi) = ratios.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), r| (l.min(*r), h.max(*r)));
        println!("{model:<6} {:>14.0} {:>14.0} {:>16.2} {:>16}", median(&e), median(&t), median(&ratios), format!("{lo:.2}-{hi:.2}"));
        results.push(serde_json::json!({ "model": model, "engine_tokens_per_s": e, "torch_tokens_per_s": t, "ratios": ratios, "median_ratio": median(&ratios) }));
    }
    let summary = serde_json::json!({ "cpu": cpu_model(), "vector_units": cpu_vector_units(), "pairs": runs.len(), "models": results });
    std::fs::write("bench-compare.json", serde_json::to_string_pretty(&summary)?)?;
    println!("(every pair in bench-compare.json)");
    Ok(())
}

/// One engine run of `btx bench train`, as its JSON.
fn engine_bench(btx: &Path, args: &[String]) -> Result<serde_json::Value> {
    let config = flag(args, "--config").unwrap_or("recipes/train/dense-tiny.ron");
    let device = flag(args, "--device").unwrap_or("auto");
    let out = std::env::temp_dir().join(format!("btx-bench-{}.json", std::process::id()));
    let mut engine_args = vec!["bench", "train", "--config", config, "--device", device, "--json", out.to_str().unwrap()];
    for f in ["--warmup", "--iters", "--batch"] {
        if let Some(v) = flag(args, f) {
            engine_args.extend([f, v]);
        }
    }
    run_btx(btx, &engine_args)?;
    let text = std::fs::read_to_string(&out)?;
    let _ = std::fs::remove_file(&out);
    Ok(serde_json::from_str(&text)?)
}

/// One run of the PyTorch reference on the engine run's models, as its JSON.
fn torch_bench(python: &str, args: &[String], engine: &serde_json::Value) -> Result<serde_json::Value> {
    let out = std::env::temp_dir().join(format!("btx-bench-engine-{}.json", std::process::id()));
    std::fs::write(&out, engine.to_string())?;
    let on_gpu = engine["device"].as_str().is_some_and(|d| !d.starts_with("cpu"));
    let torch_device = flag(args, "--torch-device").unwrap_or(if on_gpu { "cuda" } else { "cpu" });
    let mut py_args = vec!["bench/reference/train_bench.py".to_string(), "--engine-json".into(), out.display().to_string(), "--device".into(), torch_device.into()];
    for f in ["--dtype", "--warmup", "--iters"] {
        if let Some(v) = flag(args, f) {
            py_args.extend([f.to_string(), v.to_string()]);
        }
    }
    let output = Command::new(python).args(&py_args).output().context("cannot run the PyTorch reference")?;
    let _ = std::fs::remove_file(&out);
    if !output.status.success() {
        bail!("the PyTorch reference failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(serde_json::from_slice(output.stdout.split(|&b| b == b'\n').rfind(|l| !l.is_empty()).unwrap_or(&[]))?)
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The CPU's model name (Linux), or the architecture.
pub(crate) fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info.lines().find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_string()));
    name.unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// The vector instructions the CPU offers (the CPU backend's matmul kernels pick the widest
/// at run time).
pub(crate) fn cpu_vector_units() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let units: Vec<&str> = [("AVX-512", std::arch::is_x86_feature_detected!("avx512f")), ("AVX2", std::arch::is_x86_feature_detected!("avx2")), ("FMA", std::arch::is_x86_feature_detected!("fma"))]
            .into_iter()
            .filter_map(|(name, has)| has.then_some(name))
            .collect();
        if units.is_empty() { "no AVX".into() } else { units.join(", ") }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_string()
    }
}

/// `cargo xtask bench recipe [--device D]`: wall time of every stage of btx-tiny, from scratch.
fn bench_recipe(btx: &Path, args: &[String]) -> Result<()> {
    let device = flag(args, "--device").unwrap_or("auto");
    let out = std::env::temp_dir().join(format!("btx-bench-recipe-{}", std::process::id()));
    run_btx(btx, &["recipe", "run", "recipes/btx-tiny.ron", "--out", out.to_str().unwrap(), "--device", device])?;
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json"))?)?;
    println!("\n{:<28} {:>10} {:>12}", "stage", "wall s", "tokens");
    let mut total = 0.0;
    for s in report["stages"].as_array().into_iter().flatten() {
        let wall = s["wall_time_s"].as_f64().unwrap_or(0.0);
        total += wall;
        println!("{:<28} {:>10.1} {:>12}", s["stage"].as_str().unwrap_or("?"), wall, s["tokens"]);
    }
    println!("{:<28} {:>10.1}", "total", total);
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}

/// The workspace this `cargo xtask` was run in. `cargo run` sets CARGO_MANIFEST_DIR at run
/// time; the compile-time value can name another checkout when a target folder is shared
/// (cargo reuses the binary: its fingerprint does not depend on the workspace's path).
fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.parent().expect("xtask sits in the workspace").to_path_buf()
}

/// Builds the release `btx` binary and returns its path.
fn build_btx() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(["build", "--quiet", "--release", "--package", "btx-engine", "--bin", "btx"])
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("building btx failed");
    }
    let metadata = Command::new(&cargo).args(["metadata", "--format-version", "1", "--no-deps"]).output()?;
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout).context("cargo metadata")?;
    let target = metadata["target_directory"].as_str().context("cargo metadata has no target_directory")?;
    Ok(Path::new(target).join("release").join(format!("btx{}", std::env::consts::EXE_SUFFIX)))
}

fn run_btx(btx: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(btx).args(args).status().with_context(|| format!("cannot run {}", btx.display()))?;
    if !status.success() {
        bail!("btx {} failed", args.first().copied().unwrap_or(""));
    }
    Ok(())
}
