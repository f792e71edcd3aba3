//! The tokenizer as lm-evaluation-harness's `hf` backend (`HFLM`) uses it: BOS and EOS from
//! the `tokenizer_config.json` beside `tokenizer.json`, `tok_encode` (no special tokens for a
//! text that already starts with BOS) and `_encode_pair`.

use std::path::Path;

use anyhow::{Context, Result};
use tokenizers::Tokenizer;

/// The tokenizer as lm-eval's `HFLM` uses it.
pub struct TaskTokenizer {
    pub tokenizer: Tokenizer,
    /// `prefix_token_id`: BOS, else EOS; the context of an empty-context request.
    pub prefix_token: u32,
    /// BOS's text: a string that starts with it is encoded without special tokens.
    pub bos_text: Option<String>,
    /// Generation ends at this token (and its text is a stop string).
    pub eos_token: Option<u32>,
}

impl TaskTokenizer {
    /// `tok_encode`: the tokenizer's special tokens unless the text already starts with BOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let special = !self.bos_text.as_deref().is_some_and(|bos| !bos.is_empty() && text.starts_with(bos));
        self.encode_with(text, special)
    }

    fn encode_with(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode_fast(text, special).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))
    }

    /// `_encode_pair` (and the empty-context case of `loglikelihood`): the context's trailing
    /// whitespace moves to the continuation; the continuation's tokens are those of the whole
    /// text after the context's, so a token spanning the boundary counts as continuation.
    pub fn encode_pair(&self, context: &str, continuation: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        if context.is_empty() {
            let cont = self.encode_with(continuation, false)?;
            return Ok(match cont.first() {
                Some(&first) if first == self.prefix_token => (cont[..1].to_vec(), cont[1..].to_vec()),
                _ => (vec![self.prefix_token], cont),
            });
        }
        let trimmed = context.trim_end_matches(super::is_python_space);
        let (context, continuation) = (trimmed, format!("{}{continuation}", &context[trimmed.len()..]));
        let whole = self.encode(&format!("{context}{continuation}"))?;
        let context_ids = self.encode(context)?;
        Ok((whole[..context_ids.len().min(whole.len())].to_vec(), whole[context_ids.len().min(whole.len())..].to_vec()))
    }
}

/// The tokenizer of a model as lm-eval's `hf` backend uses it: BOS and EOS from the
/// `tokenizer_config.json` beside `tokenizer.json` (or the engine's `<|endoftext|>`).
pub fn task_tokenizer(tokenizer_json: &Path) -> Result<TaskTokenizer> {
    let tokenizer = crate::data::tokenizer::load_tokenizer(tokenizer_json)?;
    let config: serde_json::Value = std::fs::read_to_string(tokenizer_json.with_file_name("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let token_text = |key: &str| -> Option<String> {
        match config.get(key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
            _ => None,
        }
    };
    let default = crate::data::tokenizer::END_OF_TEXT.to_string();
    let has_config = config.is_object();
    let bos_text = if has_config { token_text("bos_token") } else { Some(default.clone()) };
    let eos_text = if has_config { token_text("eos_token") } else { Some(default) };
    let bos = bos_text.as_deref().and_then(|t| tokenizer.token_to_id(t));
    let eos = eos_text.as_deref().and_then(|t| tokenizer.token_to_id(t));
    let prefix_token = bos.or(eos).with_context(|| format!("{}: the tokenizer has neither a BOS nor an EOS token (lm-eval scores an empty context after one)", tokenizer_json.display()))?;
    Ok(TaskTokenizer { tokenizer, prefix_token, bos_text: bos.and(bos_text), eos_token: eos })
}
