//! Domains of training data: where each comes from, its deterministic train/validation split,
//! and its sequences packed to a fixed length.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::synthetic::{ArithmeticConfig, arithmetic_text};
use super::tokenizer::encode;
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
    /// Every `val_every`-th packed sequence of a domain is held out for validation.
    #[serde(default = "default_val_every")]
    pub val_every: usize,
}

fn default_val_every() -> usize {
    20
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

/// One domain's token stream, cut into sequences of `seq_len + 1` tokens (inputs and the
/// targets shifted by one); consecutive sequences share one token so every token is a
/// target exactly once.
pub struct Domain {
    pub name: String,
    pub weight: f64,
    pub train: Vec<Vec<u32>>,
    pub val: Vec<Vec<u32>>,
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

    /// Loads, tokenizes and splits every domain.
    pub fn load(&self, tokenizer: &Tokenizer, origin: &str) -> Result<Vec<Domain>> {
        self.domains.iter().map(|d| self.load_domain(d, tokenizer, origin)).collect()
    }

    fn load_domain(&self, domain: &DomainConfig, tokenizer: &Tokenizer, origin: &str) -> Result<Domain> {
        let (text, what) = match &domain.source {
            Source::File(path) => {
                let path = resolve(path);
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!("{origin}: domain `{}`: cannot read data file {}", domain.name, path.display())
                })?;
                (text, path.display().to_string())
            }
            Source::Arithmetic(config) => (arithmetic_text(config), "generated arithmetic".to_string()),
            Source::Script { files, script } => {
                let mut text = String::new();
                for path in files {
                    let path = resolve(path);
                    let file = std::fs::read_to_string(&path).with_context(|| {
                        format!("{origin}: domain `{}`: cannot read data file {}", domain.name, path.display())
                    })?;
                    for line in file.lines().filter(|l| script.matches_line(l)) {
                        text.push_str(line);
                        text.push('\n');
                    }
                }
                (text, format!("{script:?}-script lines of {} file(s)", files.len()))
            }
        };
        let ids = encode(tokenizer, &text)?;
        let (train, val) = split_sequences(&ids, self.seq_len, self.val_every);
        if train.is_empty() || val.is_empty() {
            bail!(
                "{origin}: domain `{}` ({what}) has {} tokens: too few for one training and one \
                 validation sequence of data.seq_len + 1 = {} tokens with data.val_every = {} \
                 (it needs at least {} tokens); lower `data.seq_len` or `data.val_every`, or add data",
                domain.name,
                ids.len(),
                self.seq_len + 1,
                self.val_every,
                self.val_every * self.seq_len + 1,
            );
        }
        Ok(Domain { name: domain.name.clone(), weight: domain.weight, train, val })
    }
}

/// Packs `ids` into sequences of `seq_len + 1` tokens; sequence i is held out for
/// validation when i % val_every == val_every - 1 (spread over the whole corpus, so the
/// validation set has the same mix as the training set).
pub fn split_sequences(ids: &[u32], seq_len: usize, val_every: usize) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let count = ids.len().saturating_sub(1) / seq_len;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for i in 0..count {
        let seq = ids[i * seq_len..i * seq_len + seq_len + 1].to_vec();
        if i % val_every == val_every - 1 { val.push(seq) } else { train.push(seq) }
    }
    (train, val)
}
