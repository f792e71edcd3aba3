//! Which tokens of a rendered conversation the loss counts: the assistant's replies, each
//! with the end of turn the template writes after it (what the model must learn to emit to
//! stop), as TRL's assistant-only loss counts them with a template's `{% generation %}`
//! markers; everything the user, the system and the template's headers wrote is context.

use std::ops::Range;

use anyhow::{Result, anyhow, bail};
use serde_json::{Map, Value};
use tokenizers::Tokenizer;

use super::conversation::text_of;
use super::template::ChatTemplate;

/// A conversation as text, and the byte ranges of its replies.
pub struct RenderedConversation {
    pub text: String,
    pub replies: Vec<Range<usize>>,
}

/// Renders `messages` and finds each reply in the text: walking the messages in order, each
/// one's content is looked for after the previous one's (as written, or as templates often
/// write it: trimmed, or without a `<think>` block); a reply then runs on over the
/// template's end of turn. A template that rewrites a reply beyond that is an error, not
/// a guess.
pub fn render_for_training(template: &ChatTemplate, messages: &[Value]) -> Result<RenderedConversation> {
    let text = template.render(messages, false, &Map::new())?;
    let mut replies = Vec::new();
    let mut cursor = 0;
    for (i, message) in messages.iter().enumerate() {
        let content = text_of(message);
        let assistant = message["role"] == "assistant";
        if content.trim().is_empty() {
            continue;
        }
        let Some(found) = find_content(&text[cursor..], &content) else {
            if assistant {
                bail!("chat template {} writes the reply of message {i} other than its text, so the tokens to train on cannot be found", template.origin);
            }
            continue;
        };
        let (start, mut end) = (cursor + found.start, cursor + found.end);
        if assistant {
            let end_of_turn = template.end_of_turn.as_str();
            let rest = &text[end..];
            if !end_of_turn.is_empty() && rest.starts_with(end_of_turn) {
                end += end_of_turn.len();
            } else if rest.starts_with(end_of_turn.trim_end()) {
                end += end_of_turn.trim_end().len();
            }
            replies.push(start..end);
        }
        cursor = end;
    }
    Ok(RenderedConversation { text, replies })
}

/// Where `content` appears in `text`: as it is, trimmed, or (a reasoning model's reply) its
/// part after `</think>`.
fn find_content(text: &str, content: &str) -> Option<Range<usize>> {
    let after_thinking = content.rsplit_once("</think>").map(|(_, rest)| rest.trim_start_matches('\n'));
    [Some(content), Some(content.trim()), after_thinking]
        .into_iter()
        .flatten()
        .filter(|c| !c.is_empty())
        .find_map(|c| text.find(c).map(|at| at..at + c.len()))
}

/// The token ids of `text` (as `apply_chat_template(tokenize=True)` gives them: no special
/// tokens added) and, per token, 1 when it overlaps a reply (the loss counts it), else 0.
pub fn tokens_and_mask(tokenizer: &Tokenizer, text: &str, replies: &[Range<usize>]) -> Result<(Vec<u32>, Vec<u8>)> {
    let encoding = tokenizer.encode(text, false).map_err(|e| anyhow!("tokenizer: {e}"))?;
    Ok((encoding.get_ids().to_vec(), mask_from_offsets(encoding.get_offsets(), replies)))
}

/// The mask of tokens at byte `offsets` (a token overlapping a reply by any byte counts, as a
/// token holding any character of a `{% generation %}` block does in transformers).
pub fn mask_from_offsets(offsets: &[(usize, usize)], replies: &[Range<usize>]) -> Vec<u8> {
    offsets.iter().map(|&(start, end)| u8::from(replies.iter().any(|r| start < r.end && end > r.start))).collect()
}

/// A tokenizer whose offsets are those of the text itself: the byte-level post-processor's
/// `trim_offsets` would shrink a token's offsets to exclude its spaces (a newline token's to
/// nothing). Its ids are unchanged (without special tokens, post-processing adds none).
pub fn with_raw_offsets(tokenizer: &Tokenizer) -> Tokenizer {
    let mut raw = tokenizer.clone();
    raw.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
    raw
}
