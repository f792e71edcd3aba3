//! The model: a Llama-style LM built from one module per part, whose FFN can be replaced by
//! a Mixture-of-Experts layer per layer.

pub mod attention;
pub mod autocast;
pub mod attention_experts;
pub mod block;
pub mod ffn;
pub mod gemma;
pub mod init;
pub mod linear;
pub mod lm;
pub mod lora;
pub mod load_balance;
pub mod moe;
pub mod moe_config;
pub mod norm;
pub mod projection_moe;
pub mod rope;
pub mod router;
pub mod routing_stats;

pub use lm::LanguageModel;
