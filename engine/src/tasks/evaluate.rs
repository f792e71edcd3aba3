//! Scoring a task on a model: documents -> prompts -> requests (log-likelihoods of
//! continuations, or greedy generations) -> per-document scores -> the task's metrics.
//! Tokenization and requests follow lm-evaluation-harness's `hf` backend (`HFLM`), so that
//! the same model gives the same choices and the same generations.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use super::config::{Metric, OutputType, TaskConfig};
use super::dataset::{Doc, read_split};
use super::metrics::{CorpusItems, CorpusMetric, apply_filter, choice_predictions, exact_match, mean, mean_stderr};
use super::prompt::{FewshotSampler, plain_context, turns};
use super::requests::{Request, generate_until, run_loglikelihoods};
use super::template::{Target, Templates, python_str};
pub use super::tokenizer::TaskTokenizer;

/// What the evaluation needs of a model: its context length, the log-likelihoods of
/// continuations, and greedy generation.
pub trait TaskModel {
    /// Tokens the model attends over at most (`max_length`; lm-eval truncates on the left).
    fn max_length(&self) -> usize;
    /// For each token sequence (at least two tokens), the summed log-probability of its last
    /// `continuation_len` tokens given the tokens before them, and whether each of them is the
    /// greedy (argmax) choice. One call is one batch.
    fn loglikelihoods(&self, sequences: &[Vec<u32>], continuation_lens: &[usize]) -> Result<Vec<(f64, bool)>>;
    /// The log-likelihoods (and greediness) of each of `continuations` after one shared
    /// `context` (each at least one token, the whole within `max_length + 1`), as
    /// `loglikelihoods` gives them for context + continuation. A model may compute the
    /// context once (a document's choices differ only in their continuations).
    fn shared_context_loglikelihoods(&self, context: &[u32], continuations: &[Vec<u32>]) -> Result<Vec<(f64, bool)>> {
        let sequences: Vec<Vec<u32>> = continuations.iter().map(|c| [context, c.as_slice()].concat()).collect();
        self.loglikelihoods(&sequences, &continuations.iter().map(Vec::len).collect::<Vec<_>>())
    }
    /// Greedy tokens after `context`, at most `max_tokens`, ending early when `stop` says so
    /// (it sees the tokens generated so far) or at `eos`.
    fn greedy(&self, context: &[u32], max_tokens: usize, eos: Option<u32>, stop: &mut dyn FnMut(&[u32]) -> bool) -> Result<Vec<u32>>;
}

#[derive(Debug, Clone)]
pub struct TaskOptions {
    /// lm-eval's `--limit`: the first N documents, or this share of them when below 1.
    pub limit: Option<f64>,
    /// Overrides the task's `num_fewshot` (not a task that asks for 0, as lm-eval).
    pub num_fewshot: Option<usize>,
    /// Tokens a log-likelihood batch holds at most (sequences x the longest).
    pub batch_tokens: usize,
    pub progress: bool,
    /// lm-eval's `--apply_chat_template` (and `--fewshot_as_multiturn`); None: plain prompts.
    pub chat: Option<super::prompt::ChatPrompt>,
    /// lm-eval's `--system_instruction`: before the task's description (a system turn under a
    /// chat template).
    pub system_instruction: Option<String>,
}

impl TaskOptions {
    /// What separates a multiple-choice context from each choice: the task's
    /// `target_delimiter`, or nothing after a chat template's opened assistant turn (lm-eval's
    /// `construct_requests` without a `gen_prefix`).
    pub fn choice_delimiter<'a>(&self, config: &'a TaskConfig) -> &'a str {
        if self.chat.is_some() { "" } else { &config.target_delimiter }
    }
}

/// The default `batch_tokens`.
pub const BATCH_TOKENS: usize = 4096;

/// One metric of a task under one filter, aggregated.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricScore {
    pub metric: String,
    pub filter: String,
    pub value: f64,
    /// None where lm-eval prints "N/A" (fewer than two documents).
    pub stderr: Option<f64>,
    pub higher_is_better: bool,
}

/// What one document gave (lm-eval's logged sample, in short).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DocSample {
    pub doc_id: usize,
    /// The prompt as scored.
    pub context: String,
    /// Multiple choice: each choice's log-likelihood; generation: the raw generation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loglikelihoods: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<String>,
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskResult {
    pub task: String,
    pub alias: String,
    pub version: serde_json::Value,
    pub num_fewshot: usize,
    /// Documents in the split, and scored (after `--limit`).
    pub docs_original: usize,
    pub docs_effective: usize,
    pub scores: Vec<MetricScore>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<DocSample>,
}


/// What a document asks of the model, in text.
#[derive(Debug, Clone, PartialEq)]
pub enum DocWork {
    /// One continuation per choice (`target_delimiter` + choice); `gold` indexes the choices.
    Choices { choices: Vec<String>, gold: Vec<usize> },
    /// The log-likelihood of `target` after the context.
    Continuation { target: String },
    /// A greedy generation, compared with each gold answer.
    Generate { golds: Vec<String> },
}

/// A task's documents as prompts: each document's context and what it asks.
pub struct TaskPrompts {
    pub docs_original: usize,
    pub num_fewshot: usize,
    pub contexts: Vec<String>,
    pub work: Vec<DocWork>,
}

/// Reads the task's documents and builds their prompts, few-shot examples drawn as lm-eval
/// draws them.
pub fn task_prompts(config: &TaskConfig, options: &TaskOptions) -> Result<TaskPrompts> {
    let task = &config.name;
    let split = read_split(&config.data_files[&config.eval_split], config.format, task, &config.eval_split)?;
    let templates = Templates::new(split.columns.clone());
    let num_fewshot = match (config.num_fewshot, options.num_fewshot) {
        (0, _) => 0,
        (n, None) => n,
        (_, Some(n)) => n,
    };
    let pool = match (&config.fewshot_pool_split, num_fewshot) {
        (_, 0) => vec![],
        (Some(s), _) if *s == config.eval_split => split.docs.clone(),
        (Some(s), _) => read_split(&config.data_files[s], config.format, task, s)?.docs,
        (None, _) => bail!("task {task}: few-shot examples asked but no split to draw them from"),
    };
    let count = match options.limit {
        None => split.docs.len(),
        Some(l) if l < 1.0 => (split.docs.len() as f64 * l).ceil() as usize,
        Some(l) => (l as usize).min(split.docs.len()),
    };
    let docs: &[Doc] = &split.docs[..count];
    if docs.is_empty() {
        bail!("task {task}: no documents to score (--limit {:?})", options.limit);
    }
    let mut sampler = FewshotSampler::default();
    let (mut contexts, mut work) = (Vec::with_capacity(docs.len()), Vec::with_capacity(docs.len()));
    for (i, doc) in docs.iter().enumerate() {
        let at = || format!("task {task} ({}): document {i}", config.file.display());
        let fewshot = sampler.draw(config, &pool, doc, num_fewshot).with_context(at)?;
        let turns = turns(config, &templates, doc, &fewshot, options.system_instruction.as_deref()).with_context(at)?;
        contexts.push(match &options.chat {
            Some(chat) => super::prompt::chat_context(&turns, chat).with_context(at)?,
            None => plain_context(&turns),
        });
        let target = templates.doc_to_target(&config.doc_to_target, doc, config.doc_to_choice.is_some()).with_context(at)?;
        let choices = config.doc_to_choice.as_ref().map(|c| templates.doc_to_choice(c, doc)).transpose().with_context(at)?;
        work.push(match config.output_type {
            OutputType::MultipleChoice => {
                let choices = choices.expect("checked: multiple_choice has doc_to_choice");
                let gold = gold_indices(&target, &choices).with_context(at)?;
                DocWork::Choices { choices, gold }
            }
            OutputType::Loglikelihood => match target {
                Target::Text(target) => DocWork::Continuation { target },
                _ => bail!("{}: a loglikelihood task's target must be text", at()),
            },
            OutputType::GenerateUntil => DocWork::Generate {
                golds: match (target, &choices) {
                    (Target::Index(t), Some(c)) => vec![c.get(usize::try_from(t).unwrap_or(usize::MAX)).cloned().with_context(|| format!("{}: target index {t} is outside the {} choices", at(), c.len()))?],
                    (Target::List(items), _) => items.iter().map(python_str).collect(),
                    (Target::Index(t), None) => vec![t.to_string()],
                    (Target::Text(s), _) => vec![s],
                },
            },
        });
    }
    Ok(TaskPrompts { docs_original: split.docs.len(), num_fewshot, contexts, work })
}

pub fn evaluate_task(config: &TaskConfig, model: &dyn TaskModel, tokenizer: &TaskTokenizer, options: &TaskOptions) -> Result<TaskResult> {
    let task = &config.name;
    let TaskPrompts { docs_original, num_fewshot, contexts, work } = task_prompts(config, options)?;
    let mut requests = Vec::new();
    for (i, (context, item)) in contexts.iter().zip(&work).enumerate() {
        match item {
            DocWork::Choices { choices, .. } => {
                for choice in choices {
                    let (ctx, cont) = tokenizer.encode_pair(context, &format!("{}{choice}", options.choice_delimiter(config)))?;
                    requests.push(Request { doc: i, context: ctx, continuation: cont });
                }
            }
            DocWork::Continuation { target } => {
                let (ctx, cont) = tokenizer.encode_pair(context, target)?;
                requests.push(Request { doc: i, context: ctx, continuation: cont });
            }
            DocWork::Generate { .. } => {}
        }
    }
    let docs = &contexts;

    // The model's answers.
    let max_length = model.max_length();
    let bar = progress(options.progress, requests.len() + work.iter().filter(|w| matches!(w, DocWork::Generate { .. })).count(), task);
    let loglikelihoods = run_loglikelihoods(model, &requests, max_length, options.batch_tokens.max(1), &bar)?;
    let mut per_doc_lls: Vec<Vec<(f64, bool)>> = vec![Vec::new(); docs.len()];
    for (request, ll) in requests.iter().zip(loglikelihoods) {
        per_doc_lls[request.doc].push(ll);
    }
    let mut generations: Vec<Option<String>> = vec![None; docs.len()];
    for (i, item) in work.iter().enumerate() {
        if let DocWork::Generate { .. } = item {
            generations[i] = Some(generate_until(model, tokenizer, &contexts[i], &config.generation.until, config.generation.max_gen_toks, max_length)?);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    let scores = score(config, &work, &per_doc_lls, &generations)?;
    let mut samples = Vec::with_capacity(docs.len());
    for (i, item) in work.iter().enumerate() {
        let (loglikelihoods, target) = match item {
            DocWork::Choices { choices, gold } => (per_doc_lls[i].iter().map(|(ll, _)| *ll).collect(), gold.iter().map(|&g| choices[g].clone()).collect::<Vec<_>>().join(" | ")),
            DocWork::Continuation { target } => (vec![per_doc_lls[i][0].0], target.clone()),
            DocWork::Generate { golds, .. } => (vec![], golds.join(" | ")),
        };
        samples.push(DocSample { doc_id: i, context: contexts[i].clone(), loglikelihoods, generation: generations[i].clone(), target });
    }
    Ok(TaskResult {
        task: config.name.clone(),
        alias: config.alias.clone(),
        version: config.version.clone(),
        num_fewshot,
        docs_original,
        docs_effective: docs.len(),
        scores,
        samples,
    })
}

/// The task's metrics under each filter, from every document's log-likelihoods (each with
/// whether it is greedy) or generation.
fn score(config: &TaskConfig, work: &[DocWork], per_doc_lls: &[Vec<(f64, bool)>], generations: &[Option<String>]) -> Result<Vec<MetricScore>> {
    let task = &config.name;
    let mut scores = Vec::new();
    for spec in &config.metrics {
        let filters: Vec<(&str, Option<&[super::config::FilterStep]>)> = if config.output_type == OutputType::GenerateUntil {
            config.filters.iter().map(|f| (f.name.as_str(), Some(f.steps.as_slice()))).collect()
        } else {
            vec![("none", None)]
        };
        for (filter, steps) in filters {
            let mut values = Vec::with_capacity(work.len());
            let mut pairs = Vec::new();
            for (i, item) in work.iter().enumerate() {
                match item {
                    DocWork::Choices { choices, gold } => {
                        let lls: Vec<f64> = per_doc_lls[i].iter().map(|(ll, _)| *ll).collect();
                        let (pred, pred_norm) = choice_predictions(&lls, choices);
                        values.push(match &spec.metric {
                            Metric::Acc => gold.contains(&pred) as u8 as f64,
                            Metric::AccNorm => gold.contains(&pred_norm) as u8 as f64,
                            // lm-eval: whether the gold continuation is the greedy one.
                            Metric::ExactMatch(_) => gold.first().is_some_and(|&g| per_doc_lls[i][g].1) as u8 as f64,
                            other => bail!("task {task}: metric {} on a multiple-choice task", other.name()),
                        });
                    }
                    DocWork::Continuation { .. } => {
                        let (ll, greedy) = per_doc_lls[i][0];
                        values.push(match &spec.metric {
                            Metric::Acc => greedy as u8 as f64,
                            Metric::Perplexity => ll,
                            other => bail!("task {task}: metric {} on a loglikelihood task", other.name()),
                        });
                    }
                    DocWork::Generate { golds, .. } => {
                        let filtered = apply_filter(steps.unwrap_or(&[]), vec![generations[i].clone().unwrap_or_default()])?;
                        match &spec.metric {
                            Metric::ExactMatch(options) => {
                                let mut hit = false;
                                for gold in golds {
                                    hit |= exact_match(&filtered, gold, options)?;
                                }
                                values.push(hit as u8 as f64);
                            }
                            Metric::Bleu | Metric::Chrf => pairs.push((golds.first().cloned().unwrap_or_default(), filtered)),
                            other => bail!("task {task}: metric {} on a generation task", other.name()),
                        }
                    }
                }
            }
            let (value, stderr) = match &spec.metric {
                Metric::Bleu | Metric::Chrf => {
                    let metric = if spec.metric == Metric::Bleu { CorpusMetric::Bleu } else { CorpusMetric::Chrf };
                    let items = CorpusItems::Pairs(&pairs);
                    (metric.score(&items, None), metric.bootstrap_stderr(&items))
                }
                Metric::Perplexity => {
                    let items = CorpusItems::Values(&values);
                    (CorpusMetric::Perplexity.score(&items, None), CorpusMetric::Perplexity.bootstrap_stderr(&items))
                }
                _ => (mean(&values), mean_stderr(&values)),
            };
            scores.push(MetricScore { metric: spec.metric.name().to_string(), filter: filter.to_string(), value, stderr, higher_is_better: spec.higher_is_better });
        }
    }
    Ok(scores)
}

/// The gold choices: an index, the text of a choice, or a list of either. An index outside
/// the choices is an error here (lm-eval scores it as never right).
fn gold_indices(target: &Target, choices: &[String]) -> Result<Vec<usize>> {
    let one = |value: &serde_json::Value| -> Result<usize> {
        match value {
            serde_json::Value::Number(n) if n.is_i64() => index_in(n.as_i64().unwrap(), choices),
            other => text_in(&python_str(other), choices),
        }
    };
    match target {
        Target::Index(i) => Ok(vec![index_in(*i, choices)?]),
        Target::Text(s) => Ok(vec![text_in(s, choices)?]),
        Target::List(items) => items.iter().map(one).collect(),
    }
}

fn index_in(i: i64, choices: &[String]) -> Result<usize> {
    usize::try_from(i).ok().filter(|&i| i < choices.len()).with_context(|| format!("`doc_to_target` gives index {i}, outside the {} choices", choices.len()))
}

fn text_in(s: &str, choices: &[String]) -> Result<usize> {
    choices.iter().position(|c| c == s).with_context(|| format!("`doc_to_target` gives {s:?}, which is not one of the choices {choices:?}"))
}

fn progress(enabled: bool, total: usize, task: &str) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{prefix:<24} [{bar:30}] {pos}/{len} requests {per_sec} ETA {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(task.to_string());
    bar
}

/// Per task, its scores by `metric,filter` (what reports read).
pub fn scores_by_key(result: &TaskResult) -> BTreeMap<String, (f64, Option<f64>)> {
    result.scores.iter().map(|s| (format!("{},{}", s.metric, s.filter), (s.value, s.stderr))).collect()
}
