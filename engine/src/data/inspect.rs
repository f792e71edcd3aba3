//! `btx data inspect`: what a prepared folder holds, read from its files (not just meta.json).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::prepared::{PreparedMeta, TRAIN_INDEX, TRAIN_TOKENS, TokenStream, VAL_INDEX};

/// Document lengths in tokens, from a stream's index (document starts) and its length.
pub fn document_lengths(index: &Path, tokens: u64) -> Result<Vec<u64>> {
    let bytes = std::fs::read(index).with_context(|| format!("cannot read {}", index.display()))?;
    let starts: Vec<u64> = bytes.chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
    Ok(starts.iter().zip(starts.iter().skip(1).chain([&tokens])).map(|(a, b)| b - a).collect())
}

/// The `p`-th percentile (nearest rank) of sorted `values`.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// A report of the folder: counts, document-length percentiles per split, and the first
/// `sample_tokens` tokens of the training stream decoded.
pub fn inspect(dir: &Path, sample_tokens: usize) -> Result<String> {
    let meta = PreparedMeta::read(dir)?;
    let mut out = String::new();
    writeln!(out, "prepared data {}", dir.display())?;
    writeln!(out, "tokenizer     {} (sha256 {}, {} tokens)", meta.tokenizer.path.display(), meta.tokenizer.sha256, meta.tokenizer.vocab_size)?;
    writeln!(out, "stored as     {:?}, end-of-text {}", meta.dtype, meta.eos.as_ref().map_or("none (one continuous text)".to_string(), |(t, id)| format!("{t} (id {id})")))?;
    writeln!(out, "read as       {}", meta.reader)?;
    writeln!(out, "split         {:?}", meta.split)?;
    let input_bytes: u64 = meta.inputs.iter().map(|i| i.bytes).sum();
    writeln!(out, "inputs        {} files, {:.1} MB; {} empty documents left out", meta.inputs.len(), input_bytes as f64 / 1e6, meta.empty_documents)?;
    writeln!(out, "{:<6} {:>12} {:>10} {:>8} {:>8} {:>8} {:>8} {:>10}", "split", "tokens", "documents", "p10", "p50", "p90", "p99", "max")?;
    for (name, record, index) in [("train", &meta.train, TRAIN_INDEX), ("val", &meta.val, VAL_INDEX)] {
        let mut lengths = document_lengths(&dir.join(index), record.tokens)?;
        lengths.sort_unstable();
        let p = |q| percentile(&lengths, q);
        writeln!(out, "{name:<6} {:>12} {:>10} {:>8} {:>8} {:>8} {:>8} {:>10}", record.tokens, record.documents, p(10.0), p(50.0), p(90.0), p(99.0), lengths.last().copied().unwrap_or(0))?;
    }
    let stream = TokenStream::open(&dir.join(TRAIN_TOKENS), meta.dtype, None)?;
    let ids = stream.read(0, sample_tokens.min(stream.len()));
    match super::tokenizer::load_tokenizer(&meta.tokenizer.path) {
        Ok(tokenizer) => writeln!(out, "first {} tokens, decoded:\n{}", ids.len(), super::tokenizer::decode(&tokenizer, &ids)?)?,
        Err(_) => writeln!(out, "first {} token ids (tokenizer {} not found to decode them): {ids:?}", ids.len(), meta.tokenizer.path.display())?,
    }
    Ok(out)
}
