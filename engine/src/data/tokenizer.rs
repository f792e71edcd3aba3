//! The tokenizer: a byte-level BPE in Hugging Face's tokenizer.json format, trained on the
//! shipped corpora (`btx tokenizer train`) and committed as assets/tokenizer.json.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

/// Separates documents in a packed token stream.
pub const END_OF_TEXT: &str = "<|endoftext|>";

pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    Tokenizer::from_file(path)
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("cannot load tokenizer {} (expected a Hugging Face tokenizer.json)", path.display()))
}

/// Token ids of `text`, encoded line by line: a newline always ends a pre-token, so this
/// differs from encoding the whole text at once only in whitespace just before a newline.
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let mut ids = Vec::with_capacity(text.len() / 3);
    for line in text.split_inclusive('\n') {
        let encoding = tokenizer.encode_fast(line, false).map_err(|e| anyhow!("tokenizer: {e}"))?;
        ids.extend_from_slice(encoding.get_ids());
    }
    Ok(ids)
}

pub fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> Result<String> {
    tokenizer.decode(ids, false).map_err(|e| anyhow!("tokenizer: {e}"))
}

/// Trains a byte-level BPE of `vocab_size` tokens on `files` and writes tokenizer.json.
pub fn train_tokenizer(files: &[String], vocab_size: usize, out: &Path) -> Result<()> {
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
        .build();
    let byte_level = ByteLevel::new(false, true, true);
    let mut tokenizer = TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel>::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(byte_level))
        .with_post_processor(Some(byte_level))
        .with_decoder(Some(byte_level))
        .build()
        .map_err(|e| anyhow!("{e}"))?;
    tokenizer.train_from_files(&mut trainer, files.to_vec()).map_err(|e| anyhow!("training the tokenizer: {e}"))?;
    let json = tokenizer.to_string(false).map_err(|e| anyhow!("{e}"))?;
    crate::fsutil::write_atomic(out, json.as_bytes())
}
