//! Training data: tokenizer, domains, the synthetic task, and the mixture sampler.

pub mod corpus;
pub mod rng;
pub mod sampler;
pub mod synthetic;
pub mod tokenizer;

pub use corpus::{DataConfig, Domain, DomainConfig, Script, Source};
