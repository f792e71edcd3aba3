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
    #[command(flatten)]
    tasks: TaskArgs,
}

/// Task evaluation (lm-evaluation-harness's task files) instead of validation perplexity.
#[derive(clap::Args, Default)]
pub struct TaskArgs {
    /// lm-evaluation-harness task files, or folders of them (e.g. assets/tasks).
    #[arg(long, num_args = 1..)]
    pub tasks: Vec<PathBuf>,
    /// Documents per task: the first N, or this share of them below 1 (lm-eval's --limit).
    #[arg(long)]
    pub limit: Option<f64>,
    /// Few-shot examples per document, overriding the tasks' `num_fewshot` (not a task's 0).
    #[arg(long)]
    pub num_fewshot: Option<usize>,
    /// The tokenizer.json (default: the one the checkpoint records).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Keep each document's prompt, answer and target in the results file.
    #[arg(long)]
    pub log_samples: bool,
    /// Tokens a log-likelihood batch holds at most (sequences x the longest; less memory, and
    /// smaller GPU dispatches, with less).
    #[arg(long, default_value_t = crate::tasks::evaluate::BATCH_TOKENS)]
    pub batch_tokens: usize,
    /// Write the task results (lm-evaluation-harness's results shape) here; without --config,
    /// --json does.
    #[arg(long)]
    pub tasks_json: Option<PathBuf>,
    /// lm-eval's --apply_chat_template: each prompt rendered by the tokenizer's chat template
    /// (chat_template.jinja or tokenizer_config.json beside its tokenizer.json), the assistant's
    /// turn opened; a multiple-choice answer follows it with no target delimiter.
    #[arg(long)]
    pub apply_chat_template: bool,
    /// With --apply-chat-template: this template (.jinja, or a tokenizer_config.json) instead.
    #[arg(long, requires = "apply_chat_template")]
    pub chat_template: Option<PathBuf>,
    /// lm-eval's --fewshot_as_multiturn: few-shot examples as user and assistant turns of their
    /// own; on by default with --apply-chat-template, as lm-eval's command line has it (`false`:
    /// the whole prompt is one user turn).
    #[arg(long, requires = "apply_chat_template", num_args = 0..=1, default_missing_value = "true")]
    pub fewshot_as_multiturn: Option<bool>,
    /// lm-eval's --system_instruction: text before each prompt (with the task's description
    /// after it), a system turn under --apply-chat-template.
    #[arg(long)]
    pub system_instruction: Option<String>,
}

#[derive(clap::Args)]
pub struct EnsembleArgs {
    #[arg(long, num_args = 1.., required = true)]
    experts: Vec<PathBuf>,
    /// The data to evaluate on (a training config); needed unless --tasks is given.
    #[arg(long, required_unless_present = "tasks")]
    config: Option<PathBuf>,
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
    /// The prior over experts for --tasks: a JSON array of weights, or a `btx ensemble`
    /// eval.json (its cached prior, averaged over domains). Default uniform: the posterior
    /// forms from each prompt's own tokens.
    #[arg(long, requires = "tasks")]
    prior: Option<PathBuf>,
    #[command(flatten)]
    tasks: TaskArgs,
}

fn print_evals(evals: &[DomainEval]) {
    println!("{:<16} {:>10} {:>12} {:>10}", "domain", "val loss", "perplexity", "tokens");
    for e in evals {
        println!("{:<16} {:>10.4} {:>12.3} {:>10}", e.domain, e.loss, e.perplexity, e.tokens);
    }
    println!("{:<16} {:>10.4} {:>12.3}", "mean", mean_loss(evals), mean_loss(evals).exp());
}

pub fn run(mut args: EvalArgs) -> Result<()> {
    let ckpt = checkpoint::resolve_checkpoint(&args.checkpoint)?;
    if !args.tasks.tasks.is_empty() {
        // Tasks alone, unless --config asks for validation perplexity as well.
        let Some(config) = args.config.clone() else {
            let json = args.tasks.tasks_json.as_deref().or(args.json.as_deref());
            return run_checkpoint_tasks(&ckpt, args.device, &args.tasks, json);
        };
        let tasks = std::mem::take(&mut args.tasks);
        let device = args.device;
        run(EvalArgs { config: Some(config), ..args })?;
        return run_checkpoint_tasks(&ckpt, device, &tasks, tasks.tasks_json.as_deref());
    }
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

pub fn run_ensemble(mut args: EnsembleArgs) -> Result<()> {
    let tasks = std::mem::take(&mut args.tasks);
    let (experts, prior, top_k, device) = (args.experts.clone(), args.prior.take(), args.top_k, args.device.clone());
    if args.config.is_some() {
        ensemble_perplexity(args)?;
    }
    if tasks.tasks.is_empty() {
        return Ok(());
    }
    let checkpoints = experts.iter().map(|p| checkpoint::resolve_checkpoint(p)).collect::<Result<Vec<_>>>()?;
    let k = top_k.unwrap_or(checkpoints.len());
    let log_prior: Vec<f64> = match &prior {
        Some(path) => crate::cli::generate::read_prior(path, checkpoints.len())?,
        None => vec![1.0 / checkpoints.len() as f64; checkpoints.len()],
    }
    .iter()
    .map(|p| p.ln())
    .collect();
    let model_args = serde_json::json!({ "experts": checkpoints, "top_k": k, "prior": prior });
    run_tasks(&checkpoints, device, &tasks, tasks.tasks_json.as_deref(), model_args, &|device| {
        let mut experts = Vec::new();
        let mut max_length = usize::MAX;
        let mut vocab = None;
        for ckpt in &checkpoints {
            let (config, model) = checkpoint::load_model(ckpt, device)?;
            if *vocab.get_or_insert(config.vocab_size) != config.vocab_size {
                anyhow::bail!("{}: a vocabulary of {} tokens, where the first expert has {}; an ensemble mixes distributions over one vocabulary", ckpt.display(), config.vocab_size, vocab.unwrap_or_default());
            }
            max_length = max_length.min(config.max_seq_len);
            experts.push(model);
        }
        Ok(Box::new(crate::tasks::model::EnsembleModel { experts, log_prior: log_prior.clone(), top_k: k, device: device.clone(), max_length }))
    })
}

fn ensemble_perplexity(args: EnsembleArgs) -> Result<()> {
    let config_path = args.config.expect("checked by the caller");
    let config = TrainConfig::load(&resolve(&config_path))?;
    let selected = select_device(args.device)?;
    eprintln!("device: {}", selected.description);
    let domains = load_domains(&config.data, config.model.vocab_size, &config_path.display().to_string())?;
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

/// `btx eval --tasks`: one checkpoint.
fn run_checkpoint_tasks(ckpt: &std::path::Path, device: DeviceArgs, args: &TaskArgs, json: Option<&std::path::Path>) -> Result<()> {
    let model_args = serde_json::json!({ "checkpoint": ckpt });
    run_tasks(&[ckpt.to_path_buf()], device, args, json, model_args, &|device| {
        let (config, model) = checkpoint::load_model(ckpt, device)?;
        Ok(Box::new(crate::tasks::model::CheckpointModel { model, device: device.clone(), max_length: config.max_seq_len }))
    })
}

/// Loads the model to score on a device.
type LoadTaskModel<'a> = &'a dyn Fn(&burn::prelude::Device) -> Result<Box<dyn crate::tasks::TaskModel>>;

/// Scores a model (a checkpoint, or an ensemble of `checkpoints`) on lm-evaluation-harness
/// task files; the tokenizer is the first checkpoint's unless --tokenizer names one.
fn run_tasks(checkpoints: &[PathBuf], device: DeviceArgs, args: &TaskArgs, json: Option<&std::path::Path>, mut model_args: serde_json::Value, load: LoadTaskModel) -> Result<()> {
    use crate::tasks::{TaskConfig, TaskOptions, evaluate_task, results, task_files, task_tokenizer};
    let ckpt = &checkpoints[0];
    if let Some(limit) = args.limit
        && !(limit > 0.0 && limit.is_finite())
    {
        anyhow::bail!("--limit must be a positive number (documents, or a share of them below 1), found {limit}");
    }
    // Every task file is read and checked before the model is loaded.
    let configs = task_files(&args.tasks)?.iter().map(|f| TaskConfig::load(f)).collect::<Result<Vec<_>>>()?;
    let tokenizer_path = match &args.tokenizer {
        Some(path) => resolve(path),
        None => crate::hf::checkpoint_tokenizer(ckpt)
            .with_context(|| format!("{} records no tokenizer; pass --tokenizer PATH/tokenizer.json", ckpt.display()))?,
    };
    let tokenizer = task_tokenizer(&tokenizer_path)?;
    let selected = select_device(device)?;
    eprintln!("device: {}", selected.description);
    let model = load(&selected.device)?;
    let chat = match args.apply_chat_template {
        true => Some(crate::tasks::prompt::ChatPrompt {
            template: std::sync::Arc::new(crate::chat::ChatTemplate::for_tokenizer(&tokenizer_path, args.chat_template.as_deref())?),
            fewshot_as_multiturn: args.fewshot_as_multiturn.unwrap_or(true),
        }),
        false => None,
    };
    let options = TaskOptions { limit: args.limit, num_fewshot: args.num_fewshot, batch_tokens: args.batch_tokens, progress: std::io::IsTerminal::is_terminal(&std::io::stderr()), chat: chat.clone(), system_instruction: args.system_instruction.clone() };
    let mut scored = Vec::new();
    for config in configs {
        let mut result = evaluate_task(&config, model.as_ref(), &tokenizer, &options)?;
        if !args.log_samples {
            result.samples.clear();
        }
        scored.push((config, result));
    }
    match checkpoints {
        [one] => println!("checkpoint {}", one.display()),
        many => println!("BTM ensemble of {} experts: {}", many.len(), many.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")),
    }
    println!("{}", results::results_table(&scored.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>()));
    if let Some(json) = json {
        model_args["tokenizer"] = serde_json::json!(tokenizer_path);
        let mut value = results::results_json(&scored, model_args, args.limit);
        // lm-eval's record of the prompt format: the template's text and its SHA-256.
        use sha2::Digest;
        value["fewshot_as_multiturn"] = serde_json::json!(chat.as_ref().is_some_and(|c| c.fewshot_as_multiturn));
        value["system_instruction"] = serde_json::json!(args.system_instruction);
        value["system_instruction_sha"] = args.system_instruction.as_ref().map_or(serde_json::Value::Null, |s| serde_json::json!(format!("{:x}", sha2::Sha256::digest(s.as_bytes()))));
        value["chat_template"] = chat.as_ref().map_or(serde_json::Value::Null, |c| serde_json::json!(c.template.source));
        value["chat_template_sha"] = chat.as_ref().map_or(serde_json::Value::Null, |c| serde_json::json!(format!("{:x}", sha2::Sha256::digest(c.template.source.as_bytes()))));
        if args.log_samples {
            value["samples"] = serde_json::json!(scored.iter().map(|(_, r)| (r.task.clone(), serde_json::json!(r.samples))).collect::<serde_json::Map<_, _>>());
        }
        results::write_results(json, &value)?;
    }
    Ok(())
}
