//! `btx data prepare | inspect | prepare-domain`: tokenize once, read many times.

use std::path::PathBuf;

use anyhow::Result;

use crate::data::Script;
use crate::data::documents::{ReadOptions, expand_inputs};
use crate::data::prepare::{Documents, DomainPreparation, Preparation, prepare};

#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Tokenize documents once into memory-mapped token files (train.bin, val.bin, their
    /// document indexes and meta.json) that training configs and recipes read as
    /// `Prepared("DIR")`.
    Prepare(PrepareArgs),
    /// Counts, document-length percentiles and a decoded sample of a prepared folder.
    Inspect {
        dir: PathBuf,
        /// Tokens of the training stream to decode.
        #[arg(long, default_value_t = 64)]
        sample_tokens: usize,
    },
    /// Prepare one domain of a recipe (what a recipe's `data/NAME` stage runs).
    PrepareDomain {
        /// A RON file: (domain, tokenizer, source, val_fraction).
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Args)]
pub struct PrepareArgs {
    /// Files, folders or glob patterns: .txt, .jsonl, .jsonl.gz, .jsonl.zst, .parquet.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// A Hugging Face tokenizer.json.
    #[arg(long)]
    tokenizer: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// The JSON field or Parquet column holding each document's text.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Each line of a .txt file is a document (otherwise the whole file is one).
    #[arg(long)]
    doc_per_line: bool,
    /// Share of documents held out for validation, chosen by a seeded hash of their text.
    #[arg(long, default_value_t = crate::data::corpus::default_val_fraction(), conflicts_with = "val_docs")]
    val_fraction: f64,
    /// Hold out exactly this many documents instead (those of smallest hash; reads the
    /// inputs twice).
    #[arg(long)]
    val_docs: Option<u64>,
    /// Seed of the documents' hash: another seed holds out other documents.
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
    /// Keep only the lines written mostly in this script (Arabic or Latin).
    #[arg(long, value_parser = parse_script)]
    script: Option<Script>,
    /// The token that ends each document (default: the tokenizer's end-of-text token).
    #[arg(long)]
    eos: Option<String>,
    /// The inputs (JSON lines or Parquet) hold conversations: `messages` (`role`, `content`)
    /// or ShareGPT's `conversations` (`from`, `value`), rendered with the tokenizer's chat
    /// template; a loss mask (train.mask, val.mask) counts the assistant's replies.
    #[arg(long)]
    chat: bool,
    /// With --chat: the field holding each conversation (default: `messages`, else
    /// `conversations`).
    #[arg(long, requires = "chat")]
    chat_field: Option<String>,
    /// With --chat: a chat template (.jinja, or a tokenizer_config.json) in place of the one
    /// beside the tokenizer (chat_template.jinja, or tokenizer_config.json's `chat_template`).
    #[arg(long, requires = "chat")]
    chat_template: Option<PathBuf>,
    /// With --chat: the tokens the loss counts, `replies` (the assistant's, with their end of
    /// turn) or `all`.
    #[arg(long, requires = "chat", default_value = "replies")]
    loss_on: crate::data::prepare_chat::LossOn,
}

fn parse_script(s: &str) -> Result<Script, String> {
    match s.to_lowercase().as_str() {
        "arabic" => Ok(Script::Arabic),
        "latin" => Ok(Script::Latin),
        _ => Err(format!("unknown script `{s}`; expected Arabic or Latin")),
    }
}

pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Prepare(args) => {
            if !(args.val_fraction > 0.0 && args.val_fraction < 1.0) {
                anyhow::bail!("--val-fraction must be between 0 and 1, found {}", args.val_fraction);
            }
            let files = expand_inputs(&args.inputs)?;
            let preparation = Preparation {
                documents: Documents::Files { files, options: ReadOptions { text_field: args.text_field, doc_per_line: args.doc_per_line }, script: args.script },
                tokenizer_path: args.tokenizer,
                val_fraction: args.val_fraction,
                val_docs: args.val_docs,
                split_seed: args.split_seed,
                eos: args.eos,
                source: None,
                progress: true,
                chat: args.chat.then(|| crate::data::prepare_chat::ChatOptions { field: args.chat_field, template: args.chat_template, loss_on: args.loss_on }),
            };
            prepare(preparation, &args.out)?;
            eprintln!("wrote {}", args.out.display());
            Ok(())
        }
        DataCommand::Inspect { dir, sample_tokens } => {
            print!("{}", crate::data::inspect::inspect(&dir, sample_tokens)?);
            Ok(())
        }
        DataCommand::PrepareDomain { config, out } => {
            let text = std::fs::read_to_string(&config).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", config.display()))?;
            let preparation: DomainPreparation = crate::config::parse_ron(&text, &config.display().to_string())?;
            preparation.run(&out, true)?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
    }
}
