//! Chat data: conversations rendered with a tokenizer's own chat template, exactly as
//! transformers' `apply_chat_template` renders them, and the mask of the tokens an
//! instruction-tuning loss counts (the assistant's replies).

pub mod conversation;
pub mod mask;
pub mod strftime;
pub mod template;

pub use conversation::messages_of;
pub use mask::{RenderedConversation, render_for_training, tokens_and_mask, with_raw_offsets};
pub use template::ChatTemplate;
