//! `btx tokenizer train`.

use std::path::PathBuf;

use anyhow::Result;

use crate::data::synthetic::{ArithmeticConfig, arithmetic_text};

#[derive(clap::Subcommand)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE on text files and write tokenizer.json.
    Train {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 4096)]
        vocab_size: usize,
        /// Also learn from this many generated arithmetic lines (the synthetic domain).
        #[arg(long, default_value_t = 20_000)]
        arithmetic_lines: usize,
        /// Text files to learn from.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn run(command: TokenizerCommand) -> Result<()> {
    let TokenizerCommand::Train { out, vocab_size, arithmetic_lines, files } = command;
    let mut files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let arithmetic = std::env::temp_dir().join(format!("btx-arithmetic-{}.txt", std::process::id()));
    if arithmetic_lines > 0 {
        let config = ArithmeticConfig { max_digits: 3, lines: arithmetic_lines, seed: 0 };
        std::fs::write(&arithmetic, arithmetic_text(&config))?;
        files.push(arithmetic.display().to_string());
    }
    let trained = crate::data::tokenizer::train_tokenizer(&files, vocab_size, &out);
    let _ = std::fs::remove_file(&arithmetic);
    trained?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
