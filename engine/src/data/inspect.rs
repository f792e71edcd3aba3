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

/// `ids` decoded, each run of counted tokens (mask 1) between ⟦ and ⟧.
fn marked(tokenizer: &tokenizers::Tokenizer, ids: &[u32], mask: &[u8]) -> Result<String> {
    let mut out = String::new();
    let mut start = 0;
    for end in 1..=ids.len() {
        if end == ids.len() || mask[end] != mask[start] {
            let text = super::tokenizer::decode(tokenizer, &ids[start..end])?;
            if mask[start] == 1 { write!(out, "\u{27e6}{text}\u{27e7}")? } else { out.push_str(&text) }
            start = end;
        }
    }
    Ok(out)
}

/// A report of the folder: counts, document-length percentiles per split, and the first
/// `sample_tokens` tokens of the training stream decoded.
pub fn inspect(dir: &Path, sample_tokens: usize) -> Result<String> {
    let meta = PreparedMeta::read(dir)?;
    let mut out = String::new();
    writeln!(out, "prepared data {}", dir.display())?;
    writeln!(out, "tokenizer     {} (sha256 {}, {} tokens)", meta.tokenizer.path.display(), meta.tokenizer.sha256, meta.tokenizer.vocab_size)?;
    let eos = match (&meta.eos, &meta.chat) {
        (Some((t, id)), _) => format!("{t} (id {id})"),
        (None, Some(_)) => "none (the chat template marks turns and conversations)".to_string(),
        (None, None) => "none (one continuous text)".to_string(),
    };
    writeln!(out, "stored as     {:?}, end-of-text {eos}", meta.dtype)?;
    if let Some(chat) = &meta.chat {
        writeln!(out, "chat          template {}, end of turn {:?}, loss on {:?}", chat.template, chat.end_of_turn, chat.options.loss_on)?;
        for (name, record) in [("train", &meta.train), ("val", &meta.val)] {
            if let Some(counted) = record.counted {
                writeln!(out, "loss mask     {name}: {counted} of {} tokens counted ({:.1}%)", record.tokens, 100.0 * counted as f64 / record.tokens.max(1) as f64)?;
            }
        }
    }
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
    let mask = match meta.train.counted {
        Some(_) => Some(super::prepared::MaskStream::open(&dir.join(super::prepare_chat::TRAIN_MASK), meta.train.tokens as usize, None)?.read(0, ids.len())),
        None => None,
    };
    match super::tokenizer::load_tokenizer(&meta.tokenizer.path) {
        Ok(tokenizer) if mask.is_some() => {
            writeln!(out, "first {} tokens, decoded, the tokens the loss counts between \u{27e6} and \u{27e7}:\n{}", ids.len(), marked(&tokenizer, &ids, &mask.unwrap_or_default())?)?
        }
        Ok(tokenizer) => writeln!(out, "first {} tokens, decoded:\n{}", ids.len(), super::tokenizer::decode(&tokenizer, &ids)?)?,
        Err(_) => writeln!(out, "first {} token ids (tokenizer {} not found to decode them): {ids:?}", ids.len(), meta.tokenizer.path.display())?,
    }
    Ok(out)
}
