//! Metrics as JSON lines (`RUN/metrics.jsonl`): one record per training step and one per
//! evaluated domain, typed here for the trainer that writes them and for every reader (the
//! report's loss curves and drop table, a stage's progress bar, tests). On resume, lines
//! after the checkpoint's step are dropped, so the file always describes exactly one run.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Steps completed, this one included (1-based).
    pub step: usize,
    /// Mean LM loss over the step's micro-batches.
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// Mean auxiliary (load-balancing, router z) loss.
    #[serde(deserialize_with = "nan_if_null")]
    pub aux_loss: f64,
    pub lr: f64,
    /// Global gradient norm, before clipping (inf or NaN when f16 gradients overflowed).
    #[serde(deserialize_with = "nan_if_null")]
    pub grad_norm: f64,
    /// Tokens trained on so far.
    pub tokens: u64,
    pub tokens_per_s: f64,
    pub seconds: f64,
    /// MoE models: `[layer][expert]` share of the step's tokens routed to each expert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Vec<Vec<f64>>>,
    /// MoE models: share of token-expert assignments dropped for capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<f64>,
    /// F16 runs: the loss scale this step's gradients were computed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// Why this step's update was skipped, by the spike guard or for an f16 overflow
    /// (absent: it was applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// The run stopped at this step (the guard's patience ran out).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stopped: bool,
    /// The process's peak resident memory so far, in MB (Linux; on the CPU and on a GPU whose
    /// buffers live in host memory, such as llvmpipe's GL, it includes the tensors): memory
    /// that stays flat over the steps shows here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mb: Option<f64>,
}

/// JSON has no inf or NaN: serde_json writes them as `null`, read back here as NaN, so the
/// record of a step whose loss or gradients were not finite still reads.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// One domain's validation at an evaluation step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: usize,
    /// The domain's name.
    pub eval: String,
    pub val_loss: f64,
    pub val_ppl: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routing: Vec<Vec<f64>>,
}

/// A line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetricsRecord {
    // Eval first: its `eval` field tells it apart; a step record has none.
    Eval(EvalRecord),
    Step(StepRecord),
}

impl MetricsRecord {
    pub fn step(&self) -> usize {
        match self {
            Self::Step(s) => s.step,
            Self::Eval(e) => e.step,
        }
    }
}

pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens the log, keeping only records whose `step` is at most `keep_through_step`.
    pub fn open(path: &Path, keep_through_step: usize) -> Result<Self> {
        let kept: String = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|line| serde_json::from_str::<MetricsRecord>(line).is_ok_and(|r| r.step() <= keep_through_step))
            .map(|l| format!("{l}\n"))
            .collect();
        crate::fsutil::write_atomic(path, kept.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    pub fn write(&mut self, record: &MetricsRecord) -> Result<()> {
        let line = serde_json::to_string(record)?;
        writeln!(self.file, "{line}").with_context(|| format!("cannot write {}", self.path.display()))
    }
}

/// Every record of a metrics file (lines that are not records, such as a line cut short by
/// a crash, are skipped).
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRecord>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

/// The step records of a metrics file, in order.
pub fn read_steps(path: &Path) -> Result<Vec<StepRecord>> {
    Ok(read_metrics(path)?.into_iter().filter_map(|r| if let MetricsRecord::Step(s) = r { Some(s) } else { None }).collect())
}

/// The evaluation records of a metrics file, in order.
pub fn read_evals(path: &Path) -> Result<Vec<EvalRecord>> {
    Ok(read_metrics(path)?.into_iter().filter_map(|r| if let MetricsRecord::Eval(e) = r { Some(e) } else { None }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_lines_of_earlier_runs_still_parse() {
        // A step line and an eval line as the trainer wrote them before these types existed.
        let step = r#"{"aux_loss":0.0,"grad_norm":1.5,"loss":6.25,"lr":0.001,"seconds":0.5,"step":3,"tokens":768,"tokens_per_s":1536.0}"#;
        let eval = r#"{"eval":"english","step":3,"val_loss":6.0,"val_ppl":403.4}"#;
        let MetricsRecord::Step(s) = serde_json::from_str(step).unwrap() else { panic!("not a step") };
        assert_eq!((s.step, s.loss, s.tokens, s.skipped.clone(), s.stopped), (3, 6.25, 768, None, false));
        let MetricsRecord::Eval(e) = serde_json::from_str(eval).unwrap() else { panic!("not an eval") };
        assert_eq!((e.eval.as_str(), e.val_ppl), ("english", 403.4));
        for record in [MetricsRecord::Step(s), MetricsRecord::Eval(e)] {
            let again: MetricsRecord = serde_json::from_str(&serde_json::to_string(&record).unwrap()).unwrap();
            assert_eq!(again, record);
        }
        // A step whose f16 gradients overflowed: JSON writes the norm as null; it reads as NaN.
        let overflow = StepRecord { grad_norm: f64::INFINITY, loss_scale: Some(65536.0), ..serde_json::from_str(step).unwrap() };
        let line = serde_json::to_string(&MetricsRecord::Step(overflow)).unwrap();
        assert!(line.contains(r#""grad_norm":null"#), "{line}");
        let MetricsRecord::Step(read) = serde_json::from_str(&line).unwrap() else { panic!("not a step") };
        assert!(read.grad_norm.is_nan() && read.loss_scale == Some(65536.0));
    }
}
