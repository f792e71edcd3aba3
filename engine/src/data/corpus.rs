//! Domains of training data: where each comes from, its deterministic train/validation split,
//! and its sequences packed to a fixed length.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::documents::{ReadOptions, expand_inputs, read_raw_lines};
use super::prepare::{DomainPreparation, Documents, Preparation, prepare};
use super::prepared::{InputRecord, PreparedDomain, PreparedMeta, SplitRule, TokenizerFingerprint, Windows};
use super::synthetic::{ArithmeticConfig, arithmetic_text};
use crate::config::resolve;

/// The data section of a training config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A Hugging Face tokenizer.json.
    pub tokenizer: PathBuf,
    /// Tokens per training sequence.
    pub seq_len: usize,
    /// The domains; training samples them by `weight`, evaluation reports each one.
    pub domains: Vec<DomainConfig>,
    /// A `File`, `Script` or `Arithmetic` domain (one continuous text) holds out every
    /// `val_every`-th window for validation.
    #[serde(default = "default_val_every")]
    pub val_every: usize,
    /// A `Jsonl` or `Parquet` domain holds out whole documents, this share of them (chosen by
    /// a hash of each document's text).
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
}

fn default_val_every() -> usize {
    20
}

pub fn default_val_fraction() -> f64 {
    0.01
}

fn default_text_field() -> String {
    "text".to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    pub name: String,
    pub source: Source,
    /// Share of training sequences drawn from this domain (relative; 0 = evaluate only).
    #[serde(default = "default_weight")]
    pub weight: f64,
}

fn default_weight() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Source {
    /// A UTF-8 text file.
    File(PathBuf),
    /// Generated addition problems.
    Arithmetic(ArithmeticConfig),
    /// The lines of `files` written mostly in `script`: a domain defined by a data filter
    /// rather than by a file (e.g. one language's Arabic-script and Latin-script halves).
    Script { files: Vec<PathBuf>, script: Script },
    /// JSON lines (`.jsonl`, `.jsonl.gz`, `.jsonl.zst`; files, folders or glob patterns), a
    /// document per line in `field`.
    Jsonl {
        files: Vec<PathBuf>,
        #[serde(default = "default_text_field")]
        field: String,
    },
    /// Parquet files (e.g. a Hugging Face dataset's), a document per row in `column`.
    Parquet {
        files: Vec<PathBuf>,
        #[serde(default = "default_text_field")]
        column: String,
    },
    /// A folder made by `btx data prepare`: read as it is, nothing tokenized again.
    Prepared(PathBuf),
    /// Conversations (JSON lines or Parquet: `messages` with `role`/`content`, or ShareGPT's
    /// `conversations`), rendered with the tokenizer's chat template; the loss counts the
    /// assistant's replies only unless `loss_on: All` (`btx data prepare --chat`).
    Chat {
        files: Vec<PathBuf>,
        /// The field holding each conversation (default: `messages`, else `conversations`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        field: Option<String>,
        /// A chat template file in place of the one beside the tokenizer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        template: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "crate::data::prepare_chat::LossOn::is_replies")]
        loss_on: crate::data::prepare_chat::LossOn,
    },
}

impl Source {
    /// How a `Chat` source's conversations are read and rendered (none for the others).
    pub fn chat_options(&self) -> Option<crate::data::prepare_chat::ChatOptions> {
        match self {
            Source::Chat { field, template, loss_on, .. } => Some(crate::data::prepare_chat::ChatOptions { field: field.clone(), template: template.clone(), loss_on: *loss_on }),
            _ => None,
        }
    }
}

/// Writing systems a domain filter can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Script {
    Arabic,
    Latin,
}

impl Script {
    fn contains(self, c: char) -> bool {
        match self {
            Script::Arabic => matches!(c, '\u{0600}'..='\u{06FF}' | '\u{0750}'..='\u{077F}' | '\u{08A0}'..='\u{08FF}' | '\u{FB50}'..='\u{FDFF}' | '\u{FE70}'..='\u{FEFF}'),
            Script::Latin => c.is_ascii_alphabetic() || matches!(c, '\u{00C0}'..='\u{024F}'),
        }
    }

    /// Whether most of the line's letters are in this script.
    pub fn matches_line(self, line: &str) -> bool {
        let letters: Vec<char> = line.chars().filter(|c| c.is_alphabetic()).collect();
        !letters.is_empty() && letters.iter().filter(|&&c| self.contains(c)).count() * 2 > letters.len()
    }
}

/// One domain, ready to read: its training and validation windows of `seq_len + 1` tokens
/// (inputs and the targets shifted by one), memory-mapped from its prepared token files.
pub struct Domain {
    pub name: String,
    pub weight: f64,
    pub train: Windows,
    pub val: Windows,
    /// Where its data came from (for a `Prepared` domain, the source it was prepared from,
    /// if meta.json records one): evaluation reads an arithmetic domain's settings here.
    pub source: Source,
}

impl DataConfig {
    /// Checks the section; `origin` names the config file in errors.
    pub fn validate(&self, origin: &str) -> Result<()> {
        if self.seq_len < 2 {
            bail!("{origin}: field `data.seq_len` must be at least 2, found {}", self.seq_len);
        }
        if self.val_every < 2 {
            bail!("{origin}: field `data.val_every` must be at least 2, found {}", self.val_every);
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            bail!("{origin}: field `data.val_fraction` must be between 0 and 1, found {}", self.val_fraction);
        }
        if self.domains.is_empty() {
            bail!("{origin}: field `data.domains` is empty; name at least one domain");
        }
        let mut names = std::collections::HashSet::new();
        for (i, d) in self.domains.iter().enumerate() {
            if !names.insert(&d.name) {
                bail!("{origin}: field `data.domains[{i}].name`: domain `{}` appears twice", d.name);
            }
            if !(d.weight >= 0.0 && d.weight.is_finite()) {
                bail!("{origin}: field `data.domains[{i}].weight` must be a finite number >= 0, found {}", d.weight);
            }
        }
        if self.domains.iter().all(|d| d.weight == 0.0) {
            bail!("{origin}: field `data.domains`: every weight is 0; at least one domain must be trained on");
        }
        Ok(())
    }

    /// Opens every domain: a `Prepared` one where it is, any other tokenized first into a
    /// temporary folder (a recipe prepares each once, in its data stage, and hands its stages
    /// `Prepared` domains).
    pub fn load(&self, tokenizer: &Tokenizer, origin: &str) -> Result<Vec<Domain>> {
        let fingerprint = TokenizerFingerprint::of(tokenizer, &resolve(&self.tokenizer))?;
        self.domains.iter().map(|d| self.load_domain(d, &fingerprint, origin)).collect()
    }

    fn load_domain(&self, domain: &DomainConfig, fingerprint: &TokenizerFingerprint, origin: &str) -> Result<Domain> {
        let context = || format!("{origin}: domain `{}`", domain.name);
        let (dir, owner) = match &domain.source {
            Source::Prepared(dir) => (resolve(dir), None),
            source => {
                let temp = Arc::new(tempfile::Builder::new().prefix("btx-data-").tempdir().context("cannot create a temporary folder for tokenized data")?);
                let dir = temp.path().join("tokens");
                let preparation = DomainPreparation { domain: domain.name.clone(), tokenizer: self.tokenizer.clone(), source: source.clone(), val_fraction: self.val_fraction };
                preparation.run(&dir, false).with_context(context)?;
                (dir, Some(temp))
            }
        };
        let prepared = PreparedDomain::open(&dir, self.seq_len, self.val_every, owner).with_context(context)?;
        // A folder this call prepared just now needs no check of its inputs.
        prepared.meta.check(&dir, fingerprint, matches!(domain.source, Source::Prepared(_))).with_context(context)?;
        let tokens = prepared.meta.train.tokens + prepared.meta.val.tokens;
        if prepared.train.is_empty() || prepared.val.is_empty() {
            let what = match prepared.meta.split {
                SplitRule::Interleaved => format!(
                    "too few for one training and one validation sequence of data.seq_len + 1 = {} tokens with data.val_every = {} \
                     (it needs at least {} tokens); lower `data.seq_len` or `data.val_every`, or add data",
                    self.seq_len + 1,
                    self.val_every,
                    self.val_every * self.seq_len + 1
                ),
                SplitRule::Documents { .. } => format!(
                    "{} training and {} validation tokens: each split needs at least data.seq_len + 1 = {} tokens; lower `data.seq_len`, \
                     hold out more documents, or add data",
                    prepared.meta.train.tokens,
                    prepared.meta.val.tokens,
                    self.seq_len + 1
                ),
            };
            bail!("{} ({}) has {tokens} tokens: {what}", context(), prepared.meta.reader);
        }
        let source = match (&domain.source, &prepared.meta.source) {
            (Source::Prepared(_), Some(original)) => original.clone(),
            (source, _) => source.clone(),
        };
        Ok(Domain { name: domain.name.clone(), weight: domain.weight, train: prepared.train, val: prepared.val, source })
    }
}

impl DomainPreparation {
    /// Tokenizes the domain into `out`: users' files by document, a `File`, `Script` or
    /// `Arithmetic` domain as one continuous stream read line by line (the split is then made
    /// by window when read, as it always was for these domains).
    pub fn run(&self, out: &Path, progress: bool) -> Result<PreparedMeta> {
        let documents = match &self.source {
            Source::Prepared(dir) => bail!("domain `{}` is already prepared ({})", self.domain, dir.display()),
            Source::Jsonl { files, field: column } | Source::Parquet { files, column } => Documents::Files {
                files: expand_inputs(&files.iter().map(|f| resolve(f)).collect::<Vec<_>>())?,
                options: ReadOptions { text_field: column.clone(), doc_per_line: false },
                script: None,
            },
            Source::Chat { files, .. } => Documents::Files {
                files: expand_inputs(&files.iter().map(|f| resolve(f)).collect::<Vec<_>>())?,
                options: ReadOptions { text_field: String::new(), doc_per_line: false },
                script: None,
            },
            source => {
                let source = source.clone();
                Documents::Stream(Box::new(move |read: &AtomicU64, emit: &mut dyn FnMut(String) -> Result<()>| stream_lines(&source, read, emit)))
            }
        };
        let preparation = Preparation {
            documents,
            tokenizer_path: resolve(&self.tokenizer),
            val_fraction: self.val_fraction,
            val_docs: None,
            split_seed: 0,
            eos: None,
            source: Some(self.source.clone()),
            progress,
            chat: self.source.chat_options(),
        };
        prepare(preparation, out)
    }
}

/// The lines of a `File`, `Script` or `Arithmetic` domain's text, each with its newline.
fn stream_lines(source: &Source, read: &AtomicU64, emit: &mut dyn FnMut(String) -> Result<()>) -> Result<Vec<InputRecord>> {
    let mut inputs = Vec::new();
    let mut each_line = |path: &Path, emit: &mut dyn FnMut(String) -> Result<()>| -> Result<()> {
        let (bytes, modified) = InputRecord::stat(path).with_context(|| format!("cannot read data file {}", path.display()))?;
        let sha256 = read_raw_lines(path, read, emit)?;
        inputs.push(InputRecord { path: path.to_path_buf(), bytes, modified, sha256 });
        Ok(())
    };
    match source {
        Source::File(path) => each_line(&resolve(path), emit)?,
        Source::Script { files, script } => {
            for path in files {
                each_line(&resolve(path), &mut |line| {
                    let line = line.strip_suffix('\n').unwrap_or(&line);
                    let line = line.strip_suffix('\r').unwrap_or(line);
                    if script.matches_line(line) { emit(format!("{line}\n")) } else { Ok(()) }
                })?;
            }
        }
        Source::Arithmetic(config) => {
            for line in arithmetic_text(config).split_inclusive('\n') {
                emit(line.to_string())?;
            }
        }
        Source::Jsonl { .. } | Source::Parquet { .. } | Source::Chat { .. } | Source::Prepared(_) => unreachable!("documents are read by `prepare`"),
    }
    Ok(inputs)
}
