//! A task's requests run on a model as lm-evaluation-harness's `hf` backend runs them:
//! log-likelihoods of continuations (a document's shared context computed once where that
//! pays, the rest batched by length) and greedy generation until a stop string.

use anyhow::{Result, bail};

use super::evaluate::{TaskModel, TaskTokenizer};

/// A request's place: document and choice.
pub(super) struct Request {
    pub(super) doc: usize,
    pub(super) context: Vec<u32>,
    pub(super) continuation: Vec<u32>,
}

/// Log-likelihood requests, longest first, in batches of similar length; each is lm-eval's
/// last `max_length + 1` tokens of context + continuation (the model's input is all but the
/// last of them).
pub(super) fn run_loglikelihoods(model: &dyn TaskModel, requests: &[Request], max_length: usize, batch_tokens: usize, bar: &indicatif::ProgressBar) -> Result<Vec<(f64, bool)>> {
    let mut results = vec![(0.0, false); requests.len()];
    // A document's choices share their context: computed once, then every continuation over
    // its keys and values (where nothing is truncated). The rest is batched by length.
    let mut batched = Vec::new();
    for group in shared_context_groups(requests, max_length) {
        if group.len() < 2 || requests[group[0]].context.len() < SHARED_CONTEXT_MIN_TOKENS {
            batched.extend(group);
            continue;
        }
        let continuations: Vec<Vec<u32>> = group.iter().map(|&i| requests[i].continuation.clone()).collect();
        for (&i, value) in group.iter().zip(model.shared_context_loglikelihoods(&requests[group[0]].context, &continuations)?) {
            results[i] = value;
        }
        bar.inc(group.len() as u64);
    }
    let rest: Vec<&Request> = batched.iter().map(|&i| &requests[i]).collect();
    for (value, &i) in run_batched(model, &rest, max_length, batch_tokens, bar)?.into_iter().zip(&batched) {
        results[i] = value;
    }
    Ok(results)
}

/// Contexts shorter than this are batched with the rest: computing a short context once saves
/// less than one sequence's forward pass loses against a batch of 32 (measured on the CPU with
/// a 28M model and four choices: contexts of 8-31 tokens 0.74x the batched speed, 128-151
/// tokens 1.9x, 416-439 tokens 3.0x).
const SHARED_CONTEXT_MIN_TOKENS: usize = 64;

/// The requests grouped by document and context, in order: a group of several shares its
/// context tokens and none of them is truncated (so its context can be computed once).
fn shared_context_groups(requests: &[Request], max_length: usize) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let joins = groups.last().is_some_and(|last| {
            let first = &requests[last[0]];
            first.doc == r.doc && first.context == r.context && shares(first, max_length) && shares(r, max_length)
        });
        match groups.last_mut() {
            Some(last) if joins => last.push(i),
            _ => groups.push(vec![i]),
        }
    }
    groups
}

/// Whether a request can be scored after its context's cache: both non-empty, nothing cut.
fn shares(r: &Request, max_length: usize) -> bool {
    !r.context.is_empty() && !r.continuation.is_empty() && r.context.len() + r.continuation.len() <= max_length + 1
}

/// Requests batched by length (longest first), at most `batch_tokens` tokens a batch.
fn run_batched(model: &dyn TaskModel, requests: &[&Request], max_length: usize, batch_tokens: usize, bar: &indicatif::ProgressBar) -> Result<Vec<(f64, bool)>> {
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(requests[i].context.len() + requests[i].continuation.len()));
    let mut results = vec![(0.0, false); requests.len()];
    const BATCH_SEQUENCES: usize = 32;
    let mut start = 0;
    while start < order.len() {
        let mut end = start;
        let mut longest = 0;
        let mut sequences = Vec::new();
        let mut lens = Vec::new();
        while end < order.len() && sequences.len() < BATCH_SEQUENCES {
            let r = &requests[order[end]];
            if r.continuation.is_empty() || r.continuation.len() > max_length {
                bail!("a continuation of {} tokens: lm-eval needs 1 to max_length ({max_length}) tokens", r.continuation.len());
            }
            let mut tokens: Vec<u32> = r.context.iter().chain(&r.continuation).copied().collect();
            let keep = tokens.len().min(max_length + 1);
            tokens.drain(..tokens.len() - keep);
            longest = longest.max(tokens.len() - 1);
            if !sequences.is_empty() && longest * (sequences.len() + 1) > batch_tokens {
                break;
            }
            sequences.push(tokens);
            lens.push(r.continuation.len());
            end += 1;
        }
        for (k, value) in model.loglikelihoods(&sequences, &lens)?.into_iter().enumerate() {
            results[order[start + k]] = value;
        }
        bar.inc((end - start) as u64);
        start = end;
    }
    Ok(results)
}

/// lm-eval's `generate_until`: the context's last `max_length - max_gen_toks` tokens, greedy
/// tokens until a stop string appears (or EOS, or `max_gen_toks`), the text cut before the
/// first stop string.
pub(super) fn generate_until(model: &dyn TaskModel, tokenizer: &TaskTokenizer, context: &str, until: &[String], max_gen_toks: usize, max_length: usize) -> Result<String> {
    let mut ids = tokenizer.encode(context)?;
    let keep = max_length.saturating_sub(max_gen_toks).max(1);
    if ids.len() > keep {
        ids.drain(..ids.len() - keep);
    }
    let mut stops: Vec<String> = until.iter().filter(|s| !s.is_empty()).cloned().collect();
    if let Some(eos) = tokenizer.eos_token
        && let Ok(text) = tokenizer.tokenizer.decode(&[eos], false)
        && !stops.contains(&text)
    {
        stops.push(text);
    }
    let mut decode_error = None;
    let mut stop = |generated: &[u32]| match tokenizer.decode(generated) {
        Ok(text) => stops.iter().any(|s| text.contains(s.as_str())),
        Err(e) => {
            decode_error = Some(e);
            true
        }
    };
    let generated = model.greedy(&ids, max_gen_toks, tokenizer.eos_token, &mut stop)?;
    if let Some(e) = decode_error {
        return Err(e);
    }
    let mut text = tokenizer.decode(&generated)?;
    for term in &stops {
        if let Some(at) = text.find(term.as_str()) {
            text.truncate(at);
        }
    }
    Ok(text)
}
