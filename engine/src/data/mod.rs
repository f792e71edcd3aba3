//! Training data: tokenizer, domains, the synthetic task, preparation (tokenizing once into
//! memory-mapped token files) and the mixture sampler.

pub mod corpus;
pub mod documents;
pub mod inspect;
pub mod prepare;
pub mod prepare_chat;
pub mod prepared;
pub mod rng;
pub mod sampler;
mod stream_writer;
pub mod synthetic;
pub mod tokenizer;

pub use corpus::{DataConfig, Domain, DomainConfig, Script, Source};

/// Loads the tokenizer and the domains of `data`, checking that the vocabulary fits a model
/// of `vocab_size` tokens (`origin` names the config in errors).
pub fn load_domains(data: &DataConfig, vocab_size: usize, origin: &str) -> anyhow::Result<Vec<Domain>> {
    let tokenizer = tokenizer::load_tokenizer(&crate::config::resolve(&data.tokenizer))?;
    let vocab = tokenizer.get_vocab_size(true);
    if vocab > vocab_size {
        anyhow::bail!(
            "{origin}: field `model.vocab_size` ({vocab_size}) is smaller than the vocabulary of tokenizer {} ({vocab} tokens)",
            data.tokenizer.display()
        );
    }
    data.load(&tokenizer, origin)
}
