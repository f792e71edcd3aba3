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

/// `inner` (a tensor off the autodiff graph) back on the autodiff device with the gradient
/// checkpointing strategy `strategy` of the tensor it replaces, or as it is for None (that
/// tensor was not on autodiff). `Tensor::from_inner` alone gives Burn's default strategy, and
/// a parameter whose strategy differs from its inputs' fails the next operation.
pub fn onto_autodiff<const D: usize>(inner: burn::prelude::Tensor<D>, strategy: Option<burn::tensor::GradientCheckpointingStrategy>) -> burn::prelude::Tensor<D> {
    match strategy {
        Some(strategy) => burn::prelude::Tensor::from_inner(inner).with_gradient_checkpointing_strategy(strategy),
        None => inner,
    }
}
