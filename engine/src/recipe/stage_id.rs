//! Every stage of a recipe run by what it is. One type names a stage's folder, prints it
//! (logs, `recipe status`, Slurm job names, `btx recipe stage --stage`) and parses it back,
//! so no other module builds or splits stage names as strings.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Result, bail};

/// A stage of a recipe run; its folder is `RUN/<display>` (the report's Slurm files:
/// `RUN/report-job`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StageId {
    /// A domain tokenized once: `data/DOMAIN`.
    Data(String),
    Seed,
    /// An expert, the later experts' too: `experts/NAME` (its last phase when it trains in
    /// several).
    Expert(String),
    /// An earlier phase of an expert trained in phases (`then`): `phases/NAME/INDEX`.
    Phase { expert: String, index: usize },
    /// The seed continued on its own data (e.g. instruction-tuned), kept in its place as the
    /// MoE's generalist expert: `generalist`.
    Generalist,
    /// What a merge with data-initialised routers reads from its members, measured on the
    /// run's device (`btx measure`): `router-data/MERGE`.
    RouterData(String),
    /// A merged checkpoint: `merges/NAME`.
    Merge(String),
    /// The MoE finetune of a merge: `finetune/NAME`.
    Finetune(String),
    /// The experts' domain posterior on a later expert's data (`btx measure`):
    /// `posterior/LATER`.
    Posterior(String),
    /// The posterior-weighted average a later expert branches from: `forest/LATER`.
    Forest(String),
    /// A later expert grown into a finetuned BTX or BAM model: `grow/MERGE/LATER/added|trained`.
    Grow { merge: String, later: String, step: GrowStep },
    /// The compute-matched dense baseline.
    Dense,
    /// The data-matched dense baseline.
    DenseData,
    /// One BTX member's FFN inside the averaged shared weights: `diagnosis/MEMBER`.
    Diagnosis(String),
    /// The evaluation of a compared model: `eval/SLUG`.
    Eval(String),
    /// The report, after every evaluation.
    Report,
}

/// The two steps of growing a later expert into an MoE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GrowStep {
    /// `btx moe add-expert`: the expert joins, its router row from its data.
    Added,
    /// Its new weights trained alone inside the MoE.
    Trained,
}

impl GrowStep {
    fn name(self) -> &'static str {
        match self {
            Self::Added => "added",
            Self::Trained => "trained",
        }
    }
}

impl StageId {
    /// The stage's folder, relative to the run folder.
    pub fn folder(&self) -> PathBuf {
        match self {
            Self::Report => PathBuf::from("report-job"),
            other => PathBuf::from(other.to_string()),
        }
    }

    /// Whether the stage runs a model (trains, evaluates, measures): tokenizing runs on the
    /// CPU's cores, and merges, diagnoses (merges too) and the report work on the host's
    /// copies of the weights, so those need no GPU.
    pub fn needs_gpu(&self) -> bool {
        !matches!(self, Self::Data(_) | Self::Merge(_) | Self::Diagnosis(_) | Self::Report)
    }
}

impl fmt::Display for StageId {
    /// The stage's name (padded as asked: `recipe status` aligns its columns with it).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::Data(d) => format!("data/{d}"),
            Self::Seed => "seed".into(),
            Self::Expert(e) => format!("experts/{e}"),
            Self::Phase { expert, index } => format!("phases/{expert}/{index}"),
            Self::Generalist => "generalist".into(),
            Self::RouterData(m) => format!("router-data/{m}"),
            Self::Merge(m) => format!("merges/{m}"),
            Self::Finetune(m) => format!("finetune/{m}"),
            Self::Posterior(l) => format!("posterior/{l}"),
            Self::Forest(l) => format!("forest/{l}"),
            Self::Grow { merge, later, step } => format!("grow/{merge}/{later}/{}", step.name()),
            Self::Dense => "dense".into(),
            Self::DenseData => "dense-data".into(),
            Self::Diagnosis(m) => format!("diagnosis/{m}"),
            Self::Eval(s) => format!("eval/{s}"),
            Self::Report => "report".into(),
        };
        f.pad(&name)
    }
}

impl FromStr for StageId {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        let parts: Vec<&str> = text.split('/').collect();
        let named = |make: fn(String) -> StageId| Ok(make(parts[1].to_string()));
        match parts.as_slice() {
            ["seed"] => Ok(Self::Seed),
            ["dense"] => Ok(Self::Dense),
            ["dense-data"] => Ok(Self::DenseData),
            ["report"] => Ok(Self::Report),
            ["generalist"] => Ok(Self::Generalist),
            ["phases", expert, index] if !expert.is_empty() => match index.parse() {
                Ok(index) => Ok(Self::Phase { expert: expert.to_string(), index }),
                Err(_) => bail!("stage `{text}`: a phase stage ends in its number, phases/EXPERT/N"),
            },
            [_, ""] => bail!("stage `{text}` names no {}", parts[0]),
            ["data", _] => named(Self::Data),
            ["experts", _] => named(Self::Expert),
            ["router-data", _] => named(Self::RouterData),
            ["merges", _] => named(Self::Merge),
            ["finetune", _] => named(Self::Finetune),
            ["posterior", _] => named(Self::Posterior),
            ["forest", _] => named(Self::Forest),
            ["diagnosis", _] => named(Self::Diagnosis),
            ["eval", _] => named(Self::Eval),
            ["grow", merge, later, step] if !merge.is_empty() && !later.is_empty() => {
                let step = match *step {
                    "added" => GrowStep::Added,
                    "trained" => GrowStep::Trained,
                    _ => bail!("stage `{text}`: a grow stage ends in /added or /trained"),
                };
                Ok(Self::Grow { merge: merge.to_string(), later: later.to_string(), step })
            }
            _ => bail!(
                "`{text}` is not a stage name: expected seed, generalist, dense, dense-data, report, data/DOMAIN, experts/NAME, phases/NAME/N, merges/NAME, \
                 finetune/NAME, router-data/NAME, posterior/NAME, forest/NAME, diagnosis/NAME, eval/MODEL or grow/MERGE/LATER/added|trained"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_name_parses_back_to_its_id() {
        let s = |x: &str| x.to_string();
        let ids = [
            StageId::Data(s("arabic")),
            StageId::Seed,
            StageId::Expert(s("latin")),
            StageId::Phase { expert: s("latin"), index: 0 },
            StageId::Generalist,
            StageId::RouterData(s("btx")),
            StageId::Merge(s("btx")),
            StageId::Posterior(s("code")),
            StageId::Finetune(s("btx")),
            StageId::Forest(s("code")),
            StageId::Grow { merge: s("btx"), later: s("code"), step: GrowStep::Added },
            StageId::Grow { merge: s("btx"), later: s("code"), step: GrowStep::Trained },
            StageId::Dense,
            StageId::DenseData,
            StageId::Diagnosis(s("generalist")),
            StageId::Eval(s("btx-before-finetune")),
            StageId::Report,
        ];
        for id in ids {
            assert_eq!(id.to_string().parse::<StageId>().unwrap(), id);
        }
        assert_eq!(StageId::Report.folder(), PathBuf::from("report-job"));
        assert_eq!(format!("{:<8}|", StageId::Seed), "seed    |");
        assert_eq!(StageId::Expert(s("a")).folder(), PathBuf::from("experts/a"));
    }

    #[test]
    fn a_name_that_is_no_stage_is_refused_with_the_forms_expected() {
        for bad in ["", "experts", "experts/", "experts/a/b", "grow/btx/code/other", "nonsense/x"] {
            let error = bad.parse::<StageId>().unwrap_err().to_string();
            assert!(error.contains(&format!("`{bad}`")), "{error}");
        }
    }
}
