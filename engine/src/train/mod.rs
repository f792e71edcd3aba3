//! Training: config, optimizer, metrics and the loop.

pub mod adamw;
pub mod config;
pub mod guard;
pub mod memory_plan;
pub mod metrics;
pub mod precision;
pub mod start;
pub mod trainable;
pub mod trainer;

pub use config::{OptimizerConfig, OptimizerSettings, TrainConfig};
pub use trainer::{ADAPTER_DIR, TrainOptions, TrainSummary, train};
