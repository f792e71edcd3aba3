//! The merge methods of the BTX family: one type for `btx merge`, recipes and the stage
//! files between them (a recipe's `method: Upcycle(experts: 4)` is the same value a merge
//! stage reads back).

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MergeMethod {
    /// BTX MiX (Sukhbaatar et al. 2024, §2): expert FFNs -> MoE experts, the rest averaged,
    /// routers added; finetuned.
    Btx,
    /// BAM (Zhang et al. 2024): BTX that also keeps each member's attention as a softly
    /// routed attention expert; with `shared_kv`, one averaged key/value projection for all
    /// of them; finetuned.
    Bam {
        #[serde(default)]
        shared_kv: bool,
    },
    /// Sparse upcycling (Komatsuzaki et al. 2022) of the seed into `experts` copies; with
    /// `drop_ratio` r > 0, Drop-Upcycling (Nakamura et al. 2025: r of each copy's FFN hidden
    /// units re-initialised); finetuned.
    Upcycle {
        experts: usize,
        #[serde(default)]
        drop_ratio: f64,
    },
    /// BTM parameter average (Li et al. 2022) of every tensor.
    Average,
    /// BTM ensemble (Li et al. 2022, §3) keeping the `top_k` most probable experts: evaluated
    /// from the experts as they are (`btx ensemble`), never written as one checkpoint.
    Ensemble { top_k: Option<usize> },
    /// A diagnosis: one member's FFN (0-based, the seed last) inside the members' averaged
    /// other weights, as a dense model (what the BTX MoE computes when every token goes to
    /// that expert).
    Transplant { member: usize },
}

/// `btx merge --method NAME`: the names on the command line.
pub const METHOD_NAMES: [&str; 5] = ["btx", "bam", "upcycle", "average", "transplant"];

/// The flags of `btx merge` that parametrise one method each.
pub struct MethodFlags {
    pub num_experts: usize,
    pub drop_ratio: Option<f64>,
    pub shared_kv: bool,
    pub member: Option<usize>,
}

impl MergeMethod {
    /// The method `btx merge --method NAME` asks for, with its flags; a flag of another
    /// method is an error, not ignored.
    pub fn from_flags(name: &str, flags: &MethodFlags) -> Result<Self> {
        let method = match name {
            "btx" => Self::Btx,
            "bam" => Self::Bam { shared_kv: flags.shared_kv },
            "upcycle" => Self::Upcycle { experts: flags.num_experts, drop_ratio: flags.drop_ratio.unwrap_or(0.0) },
            "average" => Self::Average,
            "transplant" => Self::Transplant { member: flags.member.unwrap_or(0) },
            other => bail!("--method {other}: expected one of {}", METHOD_NAMES.join(", ")),
        };
        if flags.drop_ratio.is_some() && !matches!(method, Self::Upcycle { .. }) {
            bail!("--drop-ratio re-initialises upcycled copies; it applies to --method upcycle only");
        }
        if flags.shared_kv && !matches!(method, Self::Bam { .. }) {
            bail!("--shared-kv shares the attention experts' keys and values; it applies to --method bam only");
        }
        if flags.member.is_some() && !matches!(method, Self::Transplant { .. }) {
            bail!("--member picks the member a transplant keeps; it applies to --method transplant only");
        }
        Ok(method)
    }

    /// Merges that build an MoE, which is then finetuned.
    pub fn is_moe(&self) -> bool {
        matches!(self, Self::Btx | Self::Bam { .. } | Self::Upcycle { .. })
    }

    /// MoE merges whose experts are the trained experts (BTX and BAM; not upcycling).
    pub fn mixes_experts(&self) -> bool {
        matches!(self, Self::Btx | Self::Bam { .. })
    }

    /// Methods written as one checkpoint by `btx merge` (all but the ensemble).
    pub fn writes_checkpoint(&self) -> bool {
        !matches!(self, Self::Ensemble { .. })
    }
}
