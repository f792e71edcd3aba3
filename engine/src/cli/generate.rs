//! `btx generate`: streamed text from a checkpoint (or a BTM ensemble of checkpoints), with
//! the experts each token was routed to.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::checkpoint::{load_model, resolve_checkpoint};
use crate::data::tokenizer::{END_OF_TEXT, decode, encode, load_tokenizer};
use crate::device::{DeviceArgs, select_device};
use crate::generate::{GenerationStats, SamplingOptions, TokenEvent, check_prompt, generate, generate_ensemble};

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// The checkpoint (or run folder) to generate with; omit with --ensemble.
    checkpoint: Option<PathBuf>,
    /// The text to continue.
    #[arg(long, conflicts_with_all = ["prompt_ids", "chat"])]
    prompt: Option<String>,
    /// A user's message: the conversation is rendered with the tokenizer's chat template
    /// (its assistant turn opened) and generation stops at the template's end of turn.
    #[arg(long, conflicts_with = "prompt_ids")]
    chat: Option<String>,
    /// With --chat: a system message before it.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// With --chat: a chat template (.jinja, or a tokenizer_config.json) in place of the one
    /// beside the tokenizer.
    #[arg(long, requires = "chat")]
    chat_template: Option<PathBuf>,
    /// The prompt as token ids, comma-separated (no tokenizer needed).
    #[arg(long, value_delimiter = ',')]
    prompt_ids: Option<Vec<i64>>,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    device: DeviceArgs,
    /// Annotate each token with the experts it was routed to (MoE), or the ensemble's domain
    /// posterior: terminal colours on a terminal, else text.
    #[arg(long)]
    show_routing: bool,
    /// One JSON object per token (id, text, experts, posterior), then the statistics.
    #[arg(long)]
    json: bool,
    /// BTM ensemble generation over these dense experts (instead of CHECKPOINT).
    #[arg(long, num_args = 1.., conflicts_with = "checkpoint")]
    ensemble: Vec<PathBuf>,
    /// The ensemble's prior over experts: a JSON array of weights, or the eval.json of
    /// `btx ensemble` (its cached prior, averaged over domains). Default uniform.
    #[arg(long, requires = "ensemble")]
    prior: Option<PathBuf>,
}

/// Where tokens go as they come: plain text, coloured text, or JSON lines.
struct Printer {
    tokenizer: Option<tokenizers::Tokenizer>,
    ids: Vec<u32>,
    printed: String,
    names: Vec<String>,
    show_routing: bool,
    json: bool,
    colour: bool,
}

const COLOURS: [u8; 6] = [31, 32, 34, 35, 36, 33];

impl Printer {
    fn text_of(&self, ids: &[u32]) -> String {
        match &self.tokenizer {
            Some(t) => decode(t, ids).unwrap_or_default(),
            None => ids.iter().map(|i| format!("{i} ")).collect(),
        }
    }

    fn name(&self, expert: usize) -> String {
        self.names.get(expert).cloned().unwrap_or_else(|| format!("expert {expert}"))
    }

    /// Prints what `event` adds to the decoded text (a token can complete a character only
    /// together with the next one).
    fn token(&mut self, event: &TokenEvent) -> Result<()> {
        self.ids.push(event.id);
        let text = self.text_of(&self.ids);
        let piece = text.strip_prefix(self.printed.as_str()).unwrap_or("").to_string();
        self.printed = text;
        let mut out = std::io::stdout().lock();
        if self.json {
            let experts: Vec<Vec<String>> = event.experts.iter().map(|l| l.iter().map(|&e| self.name(e)).collect()).collect();
            let line = serde_json::json!({ "id": event.id, "text": piece, "prompt": event.prompt, "experts": experts, "posterior": event.posterior });
            writeln!(out, "{line}")?;
        } else if self.show_routing && self.colour {
            // Coloured by the first expert of the last MoE layer (or the posterior's mode).
            let top = event.experts.last().and_then(|l| l.first().copied()).or_else(|| argmax(&event.posterior));
            match top {
                Some(e) => write!(out, "\x1b[{}m{piece}\x1b[0m", COLOURS[e % COLOURS.len()])?,
                None => write!(out, "{piece}")?,
            }
        } else if self.show_routing {
            let routes: Vec<String> = event.experts.iter().map(|l| l.iter().map(|&e| self.name(e)).collect::<Vec<_>>().join("+")).collect();
            let note = if routes.is_empty() { format!("{:.2?}", event.posterior) } else { routes.join(" | ") };
            writeln!(out, "{piece:?}\t{note}")?;
        } else {
            write!(out, "{piece}")?;
        }
        out.flush()?;
        Ok(())
    }

    fn legend(&self, experts: usize) -> String {
        (0..experts).map(|e| format!("\x1b[{}m{}\x1b[0m", COLOURS[e % COLOURS.len()], self.name(e))).collect::<Vec<_>>().join(" ")
    }
}

fn argmax(v: &[f64]) -> Option<usize> {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i)
}

/// The ensemble's prior: a JSON array, or `btx ensemble`'s eval.json (mean cached prior).
pub(crate) fn read_prior(path: &std::path::Path, experts: usize) -> Result<Vec<f64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if let Ok(weights) = serde_json::from_str::<Vec<f64>>(&text) {
        if weights.len() != experts || weights.iter().any(|p| !(*p > 0.0 && p.is_finite())) {
            bail!("{}: the prior needs one positive weight per expert ({experts} experts), found {weights:?}", path.display());
        }
        return Ok(weights);
    }
    let report = crate::eval::EvalReport::read(path)?;
    let priors: Vec<&Vec<f64>> = report
        .domains
        .iter()
        .filter_map(|d| match &d.routing {
            Some(crate::eval::DomainRouting::Prior(prior)) => Some(prior),
            _ => None,
        })
        .collect();
    if priors.is_empty() || priors.iter().any(|p| p.len() != experts) {
        bail!("{}: expected a JSON array of {experts} weights or the eval.json of a {experts}-expert `btx ensemble`", path.display());
    }
    Ok((0..experts).map(|e| priors.iter().map(|p| p[e]).sum::<f64>() / priors.len() as f64).collect())
}

/// The ids of `--chat`'s conversation as transformers' `apply_chat_template(...,
/// add_generation_prompt=True, tokenize=True)` gives them, and the id of the template's end
/// of turn (where the reply stops) when that is one token.
fn chat_prompt(tokenizer: &tokenizers::Tokenizer, tokenizer_path: &std::path::Path, args: &GenerateArgs) -> Result<(Vec<u32>, Option<u32>)> {
    let template = crate::chat::ChatTemplate::for_tokenizer(tokenizer_path, args.chat_template.as_deref())?;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(serde_json::json!({"role": "system", "content": system}));
    }
    messages.push(serde_json::json!({"role": "user", "content": args.chat.clone().unwrap_or_default()}));
    let text = template.render(&messages, true, &Default::default())?;
    let ids = tokenizer.encode(text.as_str(), false).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?.get_ids().to_vec();
    let end = tokenizer.encode(template.end_of_turn.trim_end(), false).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
    Ok((ids, (end.get_ids().len() == 1).then(|| end.get_ids()[0])))
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let members: Vec<PathBuf> = match (&args.checkpoint, args.ensemble.is_empty()) {
        (Some(c), true) => vec![resolve_checkpoint(c)?],
        (None, false) => args.ensemble.iter().map(|p| resolve_checkpoint(p)).collect::<Result<_>>()?,
        _ => bail!("give a CHECKPOINT, or --ensemble CHECKPOINT..."),
    };
    let tokenizer_path = crate::hf::checkpoint_tokenizer(&members[0]);
    let tokenizer = tokenizer_path.as_deref().map(load_tokenizer).transpose()?;
    let mut stop = tokenizer.as_ref().and_then(|t| t.token_to_id(END_OF_TEXT));
    let prompt: Vec<u32> = match (&args.prompt, &args.prompt_ids, &tokenizer) {
        _ if args.chat.is_some() => {
            let (Some(tokenizer), Some(path)) = (&tokenizer, &tokenizer_path) else {
                bail!("{} records no tokenizer (no tokenizer.json, no train.ron naming one), so no chat template", members[0].display())
            };
            let (ids, end_of_turn) = chat_prompt(tokenizer, path, &args)?;
            stop = end_of_turn.or(stop);
            ids
        }
        (Some(text), _, Some(t)) => encode(t, text)?,
        (Some(_), _, None) => bail!("{} records no tokenizer (no tokenizer.json, no train.ron naming one); give --prompt-ids instead", members[0].display()),
        (None, Some(ids), _) => ids.iter().map(|&i| u32::try_from(i).map_err(|_| anyhow::anyhow!("token id {i} is not a valid id"))).collect::<Result<_>>()?,
        (None, None, _) => bail!("give --prompt TEXT, --chat TEXT or --prompt-ids IDS"),
    };
    let options = SamplingOptions { max_tokens: args.max_tokens, temperature: args.temperature, top_k: args.top_k, top_p: args.top_p, seed: args.seed, stop };
    let selected = select_device(args.device)?;
    eprintln!("device: {}", selected.description);
    let loaded = members.iter().map(|m| load_model(m, &selected.device)).collect::<Result<Vec<_>>>()?;
    let config = loaded[0].0.clone();
    check_prompt(&prompt, &options, config.vocab_size, config.max_seq_len)?;
    let names = match args.ensemble.is_empty() {
        true => crate::merge::expert_names(&members[0]).unwrap_or_default(),
        false => members.iter().map(|m| m.display().to_string()).collect(),
    };
    let colour = std::io::stdout().is_terminal();
    let mut printer = Printer { tokenizer, ids: vec![], printed: String::new(), names, show_routing: args.show_routing, json: args.json, colour };
    let models: Vec<_> = loaded.into_iter().map(|(_, m)| m).collect();
    let stats = if args.ensemble.is_empty() {
        generate(&models[0], &prompt, &options, &selected.device, |e| printer.token(e))?
    } else {
        let prior = match &args.prior {
            Some(p) => read_prior(p, models.len())?,
            None => vec![1.0; models.len()],
        };
        generate_ensemble(&models, &prior, &prompt, &options, &selected.device, |e| printer.token(e))?
    };
    finish(&printer, &stats, config.moe.as_ref().map_or(models.len(), |m| m.num_experts), args.json)
}

fn finish(printer: &Printer, stats: &GenerationStats, experts: usize, json: bool) -> Result<()> {
    let rate = |n: usize, s: f64| n as f64 / s.max(1e-9);
    if json {
        println!("{}", serde_json::json!({ "stats": stats }));
    } else {
        println!();
    }
    if printer.show_routing && printer.colour && !json {
        eprintln!("experts: {}", printer.legend(experts));
    }
    eprintln!(
        "prompt: {} tokens in {:.2} s ({:.1} tokens/s); generated: {} tokens in {:.2} s ({:.1} tokens/s)",
        stats.prompt_tokens,
        stats.prompt_seconds,
        rate(stats.prompt_tokens, stats.prompt_seconds),
        stats.generated_tokens,
        stats.generation_seconds,
        rate(stats.generated_tokens, stats.generation_seconds)
    );
    Ok(())
}
