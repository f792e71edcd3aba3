//! The model: a Llama-style dense LM built from one module per part.

pub mod attention;
pub mod block;
pub mod ffn;
pub mod init;
pub mod lm;
pub mod rope;

pub use lm::LanguageModel;
