//! `btx merge`: the arguments of a `merge::MergeRequest`, which checks and runs it.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::merge::method::{METHOD_NAMES, MethodFlags};
use crate::merge::{MergeMethod, MergeRequest, mix::MoeOptions};

#[derive(clap::Args)]
pub struct MergeArgs {
    /// A merge request written as RON (what a recipe's merge stage runs): its method,
    /// checkpoints and options, instead of the flags below.
    #[arg(long, conflicts_with_all = ["method", "experts", "seed", "weights", "moe", "router_data", "posterior_data", "drift_from"])]
    config: Option<PathBuf>,
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(METHOD_NAMES), required_unless_present = "config")]
    method: Option<String>,
    /// The expert checkpoints (btx, average), or the one seed (upcycle).
    #[arg(long, num_args = 1.., required_unless_present = "config")]
    experts: Vec<PathBuf>,
    /// btx: keep this seed checkpoint as one more, generalist, expert (last).
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Weights of the members in averaged tensors (default uniform).
    #[arg(long, num_args = 1..)]
    weights: Option<Vec<f64>>,
    /// upcycle: experts to make.
    #[arg(long, default_value_t = 4)]
    num_experts: usize,
    /// upcycle: std of Gaussian noise added to each copy.
    #[arg(long, default_value_t = 0.0)]
    noise: f64,
    /// upcycle: Drop-Upcycling, re-initialising this ratio of each copy's FFN hidden units
    /// (0 = plain upcycling; the paper's best is 0.5).
    #[arg(long)]
    drop_ratio: Option<f64>,
    /// bam: one key/value projection (the members' average) shared by every attention expert.
    #[arg(long)]
    shared_kv: bool,
    /// MoE options as RON, e.g. "(top_k: 2, routing: TopK, load_balance: 0.01, split: 1)";
    /// "(shared_expert: Seed)" adds a shared expert.
    #[arg(long, default_value = "()")]
    moe: String,
    /// With router_init Embedding or Hidden: each member's training config (experts in
    /// order, then the seed), whose data describes its domain.
    #[arg(long, num_args = 1..)]
    router_data: Vec<PathBuf>,
    /// transplant: the member whose FFN is kept (0-based; the seed, if given, last).
    #[arg(long)]
    member: Option<usize>,
    /// average: weight each checkpoint by its domain posterior on this training config's data
    /// (how BTM branches a new expert from the existing ones), instead of --weights.
    #[arg(long)]
    posterior_data: Option<PathBuf>,
    /// transplant: also measure how far each member's shared (non-FFN) weights drifted from
    /// this seed checkpoint, recorded in the result's merge.json.
    #[arg(long)]
    drift_from: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
}

/// The request the flags (or `--config`) ask for.
fn request(args: MergeArgs) -> Result<MergeRequest> {
    if let Some(config) = &args.config {
        return crate::config::read_ron(config);
    }
    let flags = MethodFlags { num_experts: args.num_experts, drop_ratio: args.drop_ratio, shared_kv: args.shared_kv, member: args.member };
    let Some(name) = &args.method else { bail!("--method is required") };
    Ok(MergeRequest {
        method: MergeMethod::from_flags(name, &flags)?,
        experts: args.experts,
        seed: args.seed,
        weights: args.weights,
        noise: args.noise,
        options: crate::config::parse_ron::<MoeOptions>(&args.moe, "--moe")?,
        router_data: args.router_data,
        posterior_data: args.posterior_data,
        measured: None,
        drift_from: args.drift_from,
    })
}

pub fn run(args: MergeArgs) -> Result<()> {
    let out = args.out.clone();
    let config = request(args)?.run(&out)?;
    eprintln!(
        "wrote {} ({:.2}M parameters, {:.2}M active per token); peak resident memory {}",
        out.display(),
        config.num_params() as f64 / 1e6,
        config.active_params() as f64 / 1e6,
        crate::bench::peak_resident_mb().map_or("unknown".into(), |mb| format!("{mb:.0} MB")),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::MoeOptions;

    /// The example in `--moe`'s help parses.
    #[test]
    fn the_moe_help_example_parses() {
        let options: MoeOptions = crate::config::parse_ron("(top_k: 2, routing: TopK, load_balance: 0.01, split: 1)", "--moe").unwrap();
        assert_eq!(options, MoeOptions::default());
    }
}
