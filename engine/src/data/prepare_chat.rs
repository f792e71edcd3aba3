//! Preparing chat data (`btx data prepare --chat`, a recipe's `Chat` source): each record's
//! conversation rendered with the tokenizer's chat template, tokenized whole (the ids of
//! `apply_chat_template(tokenize=True)`), and a loss mask written beside the tokens: one
//! byte per token, 1 where the loss counts it (the assistant's replies and their end of
//! turn), in `train.mask` and `val.mask`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use anyhow::{Result, anyhow};
use serde::{Deserialize, Serialize};

use super::documents::read_records;
use super::prepared::InputRecord;
use crate::chat::{ChatTemplate, messages_of, render_for_training};

pub const TRAIN_MASK: &str = "train.mask";
pub const VAL_MASK: &str = "val.mask";

/// Which tokens of a conversation the loss counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LossOn {
    /// The assistant's replies (and their end of turn) only: a mask file is written.
    #[default]
    Replies,
    /// Every token, the prompts too: no mask.
    All,
}

impl std::str::FromStr for LossOn {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "replies" => Ok(Self::Replies),
            "all" => Ok(Self::All),
            other => Err(anyhow!("--loss-on {other}: expected `replies` (the assistant's replies only) or `all`")),
        }
    }
}

/// How chat data is read and rendered.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatOptions {
    /// The field holding the conversation (default: `messages`, else ShareGPT's `conversations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A chat template file (.jinja, or a tokenizer_config.json) in place of the tokenizer's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "LossOn::is_replies")]
    pub loss_on: LossOn,
}

impl LossOn {
    pub fn is_replies(&self) -> bool {
        *self == LossOn::Replies
    }
}

/// What meta.json records of chat data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRecord {
    /// Where the template came from.
    pub template: String,
    pub options: ChatOptions,
    /// What the template writes after each reply (counted with it).
    pub end_of_turn: String,
}

/// A conversation ready to tokenize: its text and, with a mask, its replies' byte ranges.
pub struct RenderedRecord {
    pub text: String,
    pub replies: Option<Vec<Range<usize>>>,
}

/// Reads every record of `files`, renders its conversation and hands it to `emit`; an error
/// names the file and line (or Parquet row). Returns what each input was.
pub fn each_conversation(
    files: &[PathBuf],
    options: &ChatOptions,
    template: &ChatTemplate,
    read: &AtomicU64,
    emit: &mut dyn FnMut(RenderedRecord) -> Result<()>,
) -> Result<Vec<InputRecord>> {
    files
        .iter()
        .map(|path| {
            let path = crate::config::resolve(path);
            let (bytes, modified) = InputRecord::stat(&path)?;
            let sha256 = read_records(&path, read, &mut |record, at| {
                let messages = messages_of(&record, options.field.as_deref()).map_err(|e| anyhow!("{at}: {e}"))?;
                let rendered = render_for_training(template, &messages).map_err(|e| anyhow!("{at}: {e}"))?;
                let replies = (options.loss_on == LossOn::Replies).then_some(rendered.replies);
                emit(RenderedRecord { text: rendered.text, replies })
            })?;
            Ok(InputRecord { path, bytes, modified, sha256 })
        })
        .collect()
}

/// The template chat data under `tokenizer` is rendered with.
pub fn template_for(tokenizer: &Path, options: &ChatOptions) -> Result<ChatTemplate> {
    ChatTemplate::for_tokenizer(tokenizer, options.template.as_ref().map(|p| crate::config::resolve(p)).as_deref())
}
