//! `cargo xtask`: runs the engine's jobs. It builds the `btx` binary (release) and decides
//! what to run and in which order; every stage itself is a `btx` subcommand.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

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
        /// auto (first hardware GPU, else CPU), cpu, wgpu, vulkan, metal, dx12.
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
            let btx = build_btx()?;
            let args: Vec<&str> = std::iter::once("bench").chain(args.iter().map(String::as_str)).collect();
            run_btx(&btx, &args)
        }
        Task::Btx { args } => {
            let btx = build_btx()?;
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_btx(&btx, &args)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_path_buf()
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
