//! `btx moe remove-expert` and `btx moe add-expert`: expert edits of a merged MoE
//! (`merge::experts`), written as a new checkpoint (atomically, streamed) whose merge.json
//! names the experts.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::merge::MergeInput;
use crate::merge::experts::{AddedRouterRows, add_expert, remove_expert, write_edited};
use crate::checkpoint::load_model;
use crate::merge::router_data::{domain_sequences, mean_router_inputs};
use crate::merge::router_init::RouterInit;

#[derive(clap::Subcommand)]
pub enum MoeCommand {
    /// Drop an expert (its FFNs and router row in every layer; in a BAM model its attention
    /// expert too): the router chooses among the rest.
    RemoveExpert {
        /// The MoE checkpoint (a run or checkpoint folder).
        checkpoint: PathBuf,
        /// The expert's name (as the merge recorded it; split pieces go together) or number.
        #[arg(long)]
        expert: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Add a dense expert trained later (its FFNs, and in a BAM model its attention) as one
    /// more expert, with a new router row per layer.
    AddExpert {
        /// The MoE checkpoint.
        checkpoint: PathBuf,
        /// The dense expert checkpoint (same architecture as the MoE's dense part).
        #[arg(long)]
        expert: PathBuf,
        /// Its name (default: its run folder's name).
        #[arg(long)]
        name: Option<String>,
        /// The new expert's training config: its router row leans towards its data's mean
        /// hidden state (away from --reference-data's), just enough to tie the best existing
        /// expert on that mean. Without it, the row is random.
        #[arg(long, requires = "reference_data")]
        router_data: Option<PathBuf>,
        /// A config over the data the MoE already serves (e.g. every domain).
        #[arg(long, requires = "router_data")]
        reference_data: Option<PathBuf>,
        /// Seeds the random router row.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(command: MoeCommand) -> Result<()> {
    match command {
        MoeCommand::RemoveExpert { checkpoint, expert, out } => {
            let moe = MergeInput::load(&checkpoint)?;
            let (plan, names) = remove_expert(&moe, &expert)?;
            write_edited(&plan, &moe, &out, "RemoveExpert", &expert, &names)
        }
        MoeCommand::AddExpert { checkpoint, expert, name, router_data, reference_data, seed, out } => {
            let moe = MergeInput::load(&checkpoint)?;
            let dense = MergeInput::load(&expert)?;
            let name = name.unwrap_or_else(|| crate::merge::run_name(&dense.path));
            let rows = match (router_data, reference_data) {
                (Some(data), Some(reference)) => {
                    // What the MoE's routers see, averaged over each data set.
                    let device = burn::prelude::Device::flex();
                    let (_, model) = load_model(&moe.path, &device)?;
                    let mean = |config: &PathBuf| -> Result<Vec<Vec<f32>>> {
                        let seqs = domain_sequences(config).with_context(|| format!("router data {}", config.display()))?;
                        Ok(mean_router_inputs(&model, &seqs, RouterInit::Hidden, &device))
                    };
                    AddedRouterRows::Toward { new_mean: mean(&data)?, reference_mean: mean(&reference)? }
                }
                (None, None) => AddedRouterRows::Random { seed },
                _ => bail!("--router-data and --reference-data go together"),
            };
            let (plan, names) = add_expert(&moe, &dense, &name, &rows)?;
            write_edited(&plan, &moe, &out, "AddExpert", &name, &names)
        }
    }
}
