//! Corpus BLEU and chrF exactly as sacreBLEU 2.x computes them with its defaults
//! (`sacrebleu.corpus_bleu(hyps, [refs]).score`, `sacrebleu.corpus_chrf(hyps, [refs]).score`),
//! which is what lm-evaluation-harness's `bleu` and `chrf` metrics call.
//!
//! BLEU (Papineni et al. 2002) with the `13a` tokenizer (mteval-v13a), clipped n-gram counts
//! summed over the corpus, `exp` smoothing and the brevity penalty; chrF (Popović 2015) with
//! character 6-grams, whitespace removed, beta = 2, precision and recall averaged over the
//! orders that occur (sacreBLEU's "effective order"). Statistics are summed over sentences and
//! scored once. Both return 0-100.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

use super::is_python_space;

fn python_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_python_space).filter(|w| !w.is_empty())
}

static PUNCTUATION: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"([\x20-\x26\x28-\x2B\x2F\x3A-\x40\x5B-\x60\x7B-\x7E])").unwrap());
static PERIOD_COMMA_AFTER_NON_DIGIT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"([^0-9])([.,])").unwrap());
static PERIOD_COMMA_BEFORE_NON_DIGIT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"([.,])([^0-9])").unwrap());
static DASH_AFTER_DIGIT: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"([0-9])(-)").unwrap());

/// sacreBLEU's `13a` tokenizer (mteval-v13a.pl's normalisation), after its right strip.
pub fn tokenize_13a(sentence: &str) -> String {
    let mut line = sentence.trim_end_matches(is_python_space).replace("<skipped>", "").replace("-\n", "").replace('\n', " ");
    if line.contains('&') {
        line = line.replace("&quot;", "\"").replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">");
    }
    let line = format!(" {line} ");
    let line = PUNCTUATION.replace_all(&line, " ${1} ");
    let line = PERIOD_COMMA_AFTER_NON_DIGIT.replace_all(&line, "${1} ${2} ");
    let line = PERIOD_COMMA_BEFORE_NON_DIGIT.replace_all(&line, " ${1} ${2}");
    let line = DASH_AFTER_DIGIT.replace_all(&line, "${1} ${2} ");
    python_split(&line).collect::<Vec<_>>().join(" ")
}

const BLEU_ORDER: usize = 4;

/// Corpus BLEU of `hypotheses` against one reference each.
pub fn corpus_bleu(hypotheses: &[String], references: &[String]) -> f64 {
    let (mut sys_len, mut ref_len) = (0usize, 0usize);
    let (mut correct, mut total) = ([0usize; BLEU_ORDER], [0usize; BLEU_ORDER]);
    for (hyp, reference) in hypotheses.iter().zip(references) {
        let (hyp, reference) = (tokenize_13a(hyp), tokenize_13a(reference));
        let hyp: Vec<&str> = python_split(&hyp).collect();
        let reference: Vec<&str> = python_split(&reference).collect();
        sys_len += hyp.len();
        ref_len += reference.len();
        for n in 1..=BLEU_ORDER {
            let ref_counts = ngram_counts(&reference, n);
            for (ngram, count) in ngram_counts(&hyp, n) {
                total[n - 1] += count;
                correct[n - 1] += count.min(ref_counts.get(ngram).copied().unwrap_or(0));
            }
        }
    }
    if correct.iter().all(|&c| c == 0) {
        return 0.0;
    }
    let brevity_penalty = match sys_len {
        0 => 0.0,
        s if s < ref_len => (1.0 - ref_len as f64 / s as f64).exp(),
        _ => 1.0,
    };
    // Precisions in percent; an order with no match gets 100 / (2^k total), k counting the
    // matchless orders so far ("exp" smoothing); orders after one with no n-gram stay 0.
    let mut precisions = [0.0f64; BLEU_ORDER];
    let mut smooth = 1.0;
    for n in 0..BLEU_ORDER {
        if total[n] == 0 {
            break;
        }
        precisions[n] = if correct[n] == 0 {
            smooth *= 2.0;
            100.0 / (smooth * total[n] as f64)
        } else {
            100.0 * correct[n] as f64 / total[n] as f64
        };
    }
    let log_sum = precisions.iter().fold(0.0, |sum, &p| sum + if p == 0.0 { -9_999_999_999.0 } else { p.ln() });
    brevity_penalty * (log_sum / BLEU_ORDER as f64).exp()
}

fn ngram_counts<'a, T: std::hash::Hash + Eq>(items: &'a [T], n: usize) -> HashMap<&'a [T], usize> {
    let mut counts = HashMap::new();
    if items.len() >= n {
        for window in items.windows(n) {
            *counts.entry(window).or_insert(0) += 1;
        }
    }
    counts
}

const CHRF_ORDER: usize = 6;
const CHRF_BETA: f64 = 2.0;

/// Corpus chrF of `hypotheses` against one reference each.
pub fn corpus_chrf(hypotheses: &[String], references: &[String]) -> f64 {
    // Per order: hypothesis n-grams, reference n-grams, matches, summed over sentences.
    let mut stats = [[0usize; 3]; CHRF_ORDER];
    for (hyp, reference) in hypotheses.iter().zip(references) {
        let hyp: Vec<char> = hyp.chars().filter(|&c| !is_python_space(c)).collect();
        let reference: Vec<char> = reference.chars().filter(|&c| !is_python_space(c)).collect();
        for n in 1..=CHRF_ORDER {
            let ref_counts = ngram_counts(&reference, n);
            let hyp_counts = ngram_counts(&hyp, n);
            let matches: usize = hyp_counts.iter().map(|(g, &c)| c.min(ref_counts.get(g).copied().unwrap_or(0))).sum();
            // sacreBLEU counts no hypothesis n-grams of an order the reference lacks.
            let hyp_total = if ref_counts.is_empty() { 0 } else { hyp.len().saturating_sub(n - 1) };
            stats[n - 1][0] += hyp_total;
            stats[n - 1][1] += reference.len().saturating_sub(n - 1);
            stats[n - 1][2] += matches;
        }
    }
    let (mut precision, mut recall, mut orders) = (0.0, 0.0, 0usize);
    for [hyp, reference, matches] in stats {
        if hyp > 0 && reference > 0 {
            precision += matches as f64 / hyp as f64;
            recall += matches as f64 / reference as f64;
            orders += 1;
        }
    }
    if orders == 0 {
        return 0.0;
    }
    let (precision, recall) = (precision / orders as f64, recall / orders as f64);
    if precision + recall == 0.0 {
        return 0.0;
    }
    let factor = CHRF_BETA * CHRF_BETA;
    100.0 * ((1.0 + factor) * precision * recall / (factor * precision + recall))
}
