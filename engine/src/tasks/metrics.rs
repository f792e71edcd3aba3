//! Per-document scores, filters and their aggregation with standard errors, as
//! lm-evaluation-harness computes them (`api/metrics.py`, `filters/`): `acc` (the choice with
//! the highest log-likelihood), `acc_norm` (log-likelihood divided by the choice's length in
//! characters), `exact_match` (Hugging Face evaluate's, with its normalisations), corpus
//! `bleu` and `chrf` (sacreBLEU), `perplexity`; the mean's standard error from the sample
//! standard deviation, the corpus metrics' from lm-eval's seeded bootstrap.

use anyhow::Result;
use regex::Regex;

use super::config::{ExactMatchOptions, FilterStep};
use super::is_python_space;
use super::python_random::PythonRandom;
use super::sacrebleu::{corpus_bleu, corpus_chrf};

/// `np.argmax`: the first index of the largest value.
pub fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// `acc` and `acc_norm` predictions: argmax of the log-likelihoods, and of the log-likelihoods
/// divided by each choice's length in characters (Unicode code points, without the delimiter).
pub fn choice_predictions(lls: &[f64], choices: &[String]) -> (usize, usize) {
    let normalized: Vec<f64> = lls.iter().zip(choices).map(|(ll, c)| ll / c.chars().count() as f64).collect();
    (argmax(lls), argmax(&normalized))
}

/// `string.punctuation`.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// `exact_match` of one prediction against one reference: the ignored patterns removed from
/// both, then case, punctuation and digits as asked, then equality.
pub fn exact_match(prediction: &str, reference: &str, options: &ExactMatchOptions) -> Result<bool> {
    let (mut p, mut r) = (prediction.to_string(), reference.to_string());
    for pattern in &options.regexes_to_ignore {
        let re = Regex::new(pattern)?;
        p = re.replace_all(&p, "").into_owned();
        r = re.replace_all(&r, "").into_owned();
    }
    if options.ignore_case {
        // numpy's per-character lower-casing: one character in, one out.
        let lower = |s: &str| s.chars().map(|c| c.to_lowercase().next().unwrap_or(c)).collect::<String>();
        p = lower(&p);
        r = lower(&r);
    }
    if options.ignore_punctuation {
        p.retain(|c| !PUNCTUATION.contains(c));
        r.retain(|c| !PUNCTUATION.contains(c));
    }
    if options.ignore_numbers {
        p.retain(|c| !c.is_ascii_digit());
        r.retain(|c| !c.is_ascii_digit());
    }
    Ok(p == r)
}

/// Applies a filter pipeline to a document's responses (one per repeat; the engine has one).
pub fn apply_filter(steps: &[FilterStep], responses: Vec<String>) -> Result<String> {
    let mut responses = responses;
    for step in steps {
        responses = match step {
            FilterStep::TakeFirst => responses.into_iter().take(1).collect(),
            FilterStep::Regex { pattern, group_select, fallback } => {
                let re = Regex::new(pattern)?;
                responses.into_iter().map(|r| regex_extract(&re, &r, *group_select, fallback)).collect()
            }
        };
    }
    Ok(responses.into_iter().next().unwrap_or_default())
}

/// lm-eval's `RegexFilter`: `re.findall`, the `group_select`-th match (negative counts from
/// the end), its first non-empty group where the pattern has several, stripped.
fn regex_extract(re: &Regex, response: &str, group_select: i64, fallback: &str) -> String {
    let groups = re.captures_len() - 1;
    let matches: Vec<Vec<String>> = re
        .captures_iter(response)
        .map(|caps| {
            if groups == 0 {
                vec![caps[0].to_string()]
            } else {
                (1..=groups).map(|g| caps.get(g).map_or(String::new(), |m| m.as_str().to_string())).collect()
            }
        })
        .collect();
    if matches.is_empty() {
        return fallback.to_string();
    }
    let index = if group_select < 0 { matches.len() as i64 + group_select } else { group_select };
    let Some(selected) = usize::try_from(index).ok().and_then(|i| matches.get(i)) else { return fallback.to_string() };
    let text = if selected.len() == 1 {
        selected[0].clone()
    } else {
        match selected.iter().find(|g| !g.is_empty()) {
            Some(g) => g.clone(),
            None => return fallback.to_string(),
        }
    };
    text.trim_matches(is_python_space).to_string()
}

/// `mean`: Python's `sum(arr) / len(arr)`.
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// `sample_stddev`: the standard deviation with n - 1.
pub fn sample_stddev(values: &[f64]) -> f64 {
    let mu = mean(values);
    (values.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / (values.len() - 1) as f64).sqrt()
}

/// `mean_stderr`: the standard error of the mean; None ("N/A") for fewer than two items.
pub fn mean_stderr(values: &[f64]) -> Option<f64> {
    (values.len() > 1).then(|| sample_stddev(values) / (values.len() as f64).sqrt())
}

/// A corpus-level metric over (reference, prediction) items or per-document values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CorpusMetric {
    Bleu,
    Chrf,
    /// exp(-mean log-likelihood).
    Perplexity,
}

/// The items a corpus metric aggregates: translations or log-likelihoods.
pub enum CorpusItems<'a> {
    Pairs(&'a [(String, String)]),
    Values(&'a [f64]),
}

impl CorpusMetric {
    pub fn score(self, items: &CorpusItems, pick: Option<&[usize]>) -> f64 {
        let all: Vec<usize>;
        let indices = match pick {
            Some(p) => p,
            None => {
                let n = match items {
                    CorpusItems::Pairs(p) => p.len(),
                    CorpusItems::Values(v) => v.len(),
                };
                all = (0..n).collect();
                &all
            }
        };
        match (self, items) {
            (Self::Bleu | Self::Chrf, CorpusItems::Pairs(pairs)) => {
                let refs: Vec<String> = indices.iter().map(|&i| pairs[i].0.clone()).collect();
                let preds: Vec<String> = indices.iter().map(|&i| pairs[i].1.clone()).collect();
                if self == Self::Bleu { corpus_bleu(&preds, &refs) } else { corpus_chrf(&preds, &refs) }
            }
            (Self::Perplexity, CorpusItems::Values(values)) => {
                let picked: Vec<f64> = indices.iter().map(|&i| values[i]).collect();
                (-mean(&picked)).exp()
            }
            _ => unreachable!("a corpus metric's items"),
        }
    }

    /// lm-eval's `bootstrap_stderr`: chunks of at most 1000 resamples, chunk i drawn by
    /// `random.Random(i).choices`, the sample standard deviation of the resampled scores;
    /// 100 resamples for bleu and chrf, lm-eval's default 100,000 for the others.
    pub fn bootstrap_stderr(self, items: &CorpusItems) -> Option<f64> {
        let n = match items {
            CorpusItems::Pairs(p) => p.len(),
            CorpusItems::Values(v) => v.len(),
        };
        if n <= 1 {
            return None;
        }
        let iters: usize = match self {
            Self::Bleu | Self::Chrf => 100,
            Self::Perplexity => 100_000,
        };
        let chunk = iters.min(1000);
        let mut scores = Vec::with_capacity(iters);
        for i in 0..iters / chunk {
            let mut rng = PythonRandom::new(i as u64);
            for _ in 0..chunk {
                let pick = rng.choices(n, n);
                scores.push(self.score(items, Some(&pick)));
            }
        }
        Some(sample_stddev(&scores))
    }
}
