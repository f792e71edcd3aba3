//! Recipes: the whole method as one RON file, run stage by stage.

pub mod budget;
pub mod config;
mod validate;
pub mod entries;
pub mod gpus;
pub mod graph;
pub mod grow;
pub mod merges;
pub mod plan;
pub mod plots;
pub mod report;
pub mod report_figures;
mod report_inputs;
pub mod report_merge;
pub mod report_record;
pub mod report_tasks;
pub mod runner;
pub mod seeds;
pub mod slurm;
pub mod stage;
pub mod stage_id;
pub mod sweep;
pub mod variants;

pub use config::Recipe;
pub use runner::{RunOptions, print_status, run_recipe};
