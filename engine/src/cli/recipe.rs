//! `btx recipe run|status`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::resolve;
use crate::device::DeviceArgs;
use crate::recipe::{Recipe, RunOptions, print_status, run_recipe};

#[derive(clap::Subcommand)]
pub enum RecipeCommand {
    /// Run every stage that is not up to date, then write RUN/report.md.
    Run {
        recipe: PathBuf,
        /// Run folder (default: runs/<recipe name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Independent stages (the experts) run this many at a time.
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Each stage's state: complete, partial, stale or pending.
    Status {
        recipe: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `runs/<recipe file stem>` unless `--out` says otherwise.
fn recipe_out(recipe: &Path, out: Option<PathBuf>) -> PathBuf {
    out.unwrap_or_else(|| {
        let name = recipe.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "recipe".into());
        PathBuf::from("runs").join(name)
    })
}

pub fn run(command: RecipeCommand) -> Result<()> {
    match command {
        RecipeCommand::Run { recipe, out, jobs, device } => {
            let parsed = Recipe::load(&recipe)?;
            let out = resolve(&recipe_out(&recipe, out));
            let btx = std::env::current_exe().context("cannot find the btx binary")?;
            run_recipe(&parsed, &RunOptions { out, jobs, device, btx })
        }
        RecipeCommand::Status { recipe, out } => print_status(&Recipe::load(&recipe)?, &resolve(&recipe_out(&recipe, out))),
    }
}
