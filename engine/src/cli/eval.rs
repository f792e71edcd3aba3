//! `btx eval` and `btx ensemble`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::checkpoint::{self, TRAIN_CONFIG_FILE};
use crate::config::resolve;
use crate::device::{DeviceArgs, select_device};
use crate::eval::{DomainEval, EvalReport, arithmetic_accuracy, evaluate, mean_loss};
use crate::data::load_domains;
use crate::train::TrainConfig;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A checkpoint folder, or a run folder (its latest checkpoint).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The data to evaluate on (default: the config the checkpoint was trained with).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
    /// Validation batches per domain; 0 = the whole validation split.
    #[arg(long, default_value_t = 0)]
    batches: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Exact-match accuracy on this many addition problems (for arithmetic domains).
    #[arg(long, default_value_t = 0)]
    arithmetic: usize,
}

#[derive(clap::Args)]
pub struct EnsembleArgs {
    #[arg(long, num_args = 1.., required = true)]
    experts: Vec<PathBuf>,
    /// The data to evaluate on (a training config).
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
    /// Held-out sequences per domain that estimate the cached prior.
    #[arg(long, default_value_t = 32)]
    prior_sequences: usize,
    /// Sequences per domain scored after them.
    #[arg(long, default_value_t = 64)]
    eval_sequences: usize,
    /// Keep the k most probable experts at each position (default: all).
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    json: Option<PathBuf>,
}

fn print_evals(evals: &[DomainEval]) {
    println!("{:<16} {:>10} {:>12} {:>10}", "domain", "val loss", "perplexity", "tokens");
    for e in evals {
        println!("{:<16} {:>10.4} {:>12.3} {:>10}", e.domain, e.loss, e.perplexity, e.tokens);
    }
    println!("{:<16} {:>10.4} {:>12.3}", "mean", mean_loss(evals), mean_loss(evals).exp());
}

pub fn run(args: EvalArgs) -> Result<()> {
    let ckpt = checkpoint::resolve_checkpoint(&args.checkpoint)?;
    let config_path = args.config.unwrap_or_else(|| ckpt.join(TRAIN_CONFIG_FILE));
    let config = TrainConfig::load(&resolve(&config_path))
        .with_context(|| format!("the data to evaluate on comes from {}", config_path.display()))?;
    let selected = select_device(args.device)?;
    eprintln!("device: {}", selected.description);
    let domains = load_domains(&config.data, config.model.vocab_size, &config_path.display().to_string())?;
    let (_, model) = checkpoint::load_model(&ckpt, &selected.device)?;
    let evals = evaluate(&model, &domains, config.batch_size, args.batches, &selected.device);
    let mut accuracy = BTreeMap::new();
    if args.arithmetic > 0 {
        let tokenizer = crate::data::tokenizer::load_tokenizer(&resolve(&config.data.tokenizer))?;
        for d in &domains {
            if let crate::data::Source::Arithmetic(a) = &d.source {
                let acc = arithmetic_accuracy(&model, &tokenizer, a, args.arithmetic, &selected.device)?;
                accuracy.insert(d.name.clone(), acc);
            }
        }
    }
    println!("checkpoint {}", ckpt.display());
    print_evals(&evals);
    for (domain, acc) in &accuracy {
        println!("{domain}: exact-match accuracy {:.1}% on {} problems", acc * 100.0, args.arithmetic);
    }
    if let Some(json) = args.json {
        EvalReport { checkpoint: Some(ckpt), experts: vec![], top_k: None, domains: evals, accuracy }.write(&json)?;
    }
    Ok(())
}

pub fn run_ensemble(args: EnsembleArgs) -> Result<()> {
    let config = TrainConfig::load(&resolve(&args.config))?;
    let selected = select_device(args.device)?;
    eprintln!("device: {}", selected.description);
    let domains = load_domains(&config.data, config.model.vocab_size, &args.config.display().to_string())?;
    let models = args
        .experts
        .iter()
        .map(|p| Ok(checkpoint::load_model(&checkpoint::resolve_checkpoint(p)?, &selected.device)?.1))
        .collect::<Result<Vec<_>>>()?;
    let k = args.top_k.unwrap_or(models.len());
    let evals = crate::ensemble::evaluate_ensemble(
        &models,
        &domains,
        config.batch_size,
        args.prior_sequences,
        args.eval_sequences,
        k,
        &selected.device,
    );
    println!("BTM ensemble of {} experts, top-{k}", models.len());
    print_evals(&evals);
    for e in &evals {
        let Some(crate::eval::DomainRouting::Prior(prior)) = &e.routing else { continue };
        let prior: Vec<String> = prior.iter().map(|p| format!("{p:.2}")).collect();
        println!("  cached prior on {}: [{}]", e.domain, prior.join(", "));
    }
    if let Some(json) = args.json {
        let report = EvalReport { checkpoint: None, experts: args.experts, top_k: Some(k), domains: evals, accuracy: BTreeMap::new() };
        report.write(&json)?;
    }
    Ok(())
}
