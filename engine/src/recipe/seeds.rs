//! A comparison over several seeds: each seed's run writes its own report; this one puts
//! them side by side. Every model gets the mean over seeds of its validation loss (shown as
//! perplexity) and the range across seeds; a final model whose range overlaps the best one's
//! is reported as tied with it, not beaten.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use super::entries::EntryKind;
use super::report_record::{ModelRecord, ReportRecord};

use crate::fsutil::write_atomic;

/// One model's losses on one measure (mean, or a domain) across seeds.
struct Spread {
    losses: Vec<f64>,
}

impl Spread {
    fn mean(&self) -> f64 {
        self.losses.iter().sum::<f64>() / self.losses.len() as f64
    }
    fn min(&self) -> f64 {
        self.losses.iter().cloned().fold(f64::MAX, f64::min)
    }
    fn max(&self) -> f64 {
        self.losses.iter().cloned().fold(f64::MIN, f64::max)
    }
    /// "92.1 (88.0-95.3)" in perplexity.
    fn cell(&self) -> String {
        format!("{:.2} ({:.2}-{:.2})", self.mean().exp(), self.min().exp(), self.max().exp())
    }
    fn overlaps(&self, other: &Spread) -> bool {
        self.min() <= other.max() && other.min() <= self.max()
    }
}

/// The winner of one measure among `finals` and the models tied with it.
fn verdict(names: &[&str], spreads: &[&Spread]) -> String {
    let best = (0..spreads.len()).min_by(|&a, &b| spreads[a].mean().total_cmp(&spreads[b].mean())).expect("final models");
    let tied: Vec<&str> = (0..spreads.len()).filter(|&i| i != best && spreads[i].overlaps(spreads[best])).map(|i| names[i]).collect();
    if tied.is_empty() {
        format!("**{}** wins ({:.2}), outside every other model's range", names[best], spreads[best].mean().exp())
    } else {
        format!("**{}** has the lowest mean ({:.2}) but ties with {} (ranges overlap)", names[best], spreads[best].mean().exp(), tied.join(", "))
    }
}

/// A term across seeds: its mean, and its range in brackets ("-" where a seed lacks it).
fn spread_cell(values: &[Option<f64>]) -> String {
    let Some(values) = values.iter().copied().collect::<Option<Vec<f64>>>().filter(|v| !v.is_empty()) else { return "-".into() };
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    format!("{mean:+.3} ({lo:+.3} to {hi:+.3})")
}

/// Writes RUN/report.md over the runs in RUN/seed-N/.
pub fn write_report(out: &Path, seeds: &[u64]) -> Result<()> {
    let reports = seeds
        .iter()
        .map(|s| ReportRecord::read(&out.join(format!("seed-{s}"))))
        .collect::<Result<Vec<_>>>()?;
    let first = &reports[0];
    let domains: Vec<&str> = first.models.first().map(|m| m.domains.iter().map(|d| d.domain.as_str()).collect()).unwrap_or_default();
    // [model][measure: mean, then each domain] spreads, in the first run's order.
    let spreads: Vec<(&ModelRecord, Vec<Spread>)> = first
        .models
        .iter()
        .map(|m| {
            let runs: Vec<&ModelRecord> = reports.iter().filter_map(|r| r.models.iter().find(|x| x.model == m.model)).collect();
            let mut measures = vec![Spread { losses: runs.iter().map(|r| r.mean_loss).collect() }];
            measures.extend((0..domains.len()).map(|d| Spread { losses: runs.iter().map(|r| r.domains[d].loss).collect() }));
            (m, measures)
        })
        .collect();
    let mut md = format!("# Recipe report across {} seeds: {}\n\n", seeds.len(), out.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
    writeln!(md, "Seeds {seeds:?}, each a whole run with its own report (`seed-N/report.md`). Each cell: validation perplexity of the mean loss over the seeds, and in brackets the lowest and highest across seeds. A final model whose range overlaps the best one's is tied with it.\n")?;
    writeln!(md, "| model | mean | {} |\n|---|---:|{}", domains.join(" | "), "---:|".repeat(domains.len()))?;
    for (m, measures) in &spreads {
        let cells: Vec<String> = measures.iter().map(Spread::cell).collect();
        writeln!(md, "| {} | {} |", m.model, cells.join(" | "))?;
    }
    let finals: Vec<&(&ModelRecord, Vec<Spread>)> = spreads.iter().filter(|(m, _)| m.kind == EntryKind::Final).collect();
    if finals.len() >= 2 {
        let names: Vec<&str> = finals.iter().map(|(m, _)| m.model.as_str()).collect();
        writeln!(md, "\nAmong the final models:\n")?;
        for (i, measure) in std::iter::once("on average").chain(domains.iter().copied()).enumerate() {
            let column: Vec<&Spread> = finals.iter().map(|(_, s)| &s[i]).collect();
            writeln!(md, "- {measure}: {}", verdict(&names, &column))?;
        }
    }
    let accounting: Vec<Vec<super::report_record::AccountingRecord>> = reports.iter().map(|r| r.accounting.clone()).collect();
    if accounting.iter().all(|a| !a.is_empty()) {
        writeln!(md, "\n## Where the gains go\n\n{} Each cell: the mean over the seeds, and in brackets the lowest and highest.\n", super::report_merge::ACCOUNTING_TEXT)?;
        super::report_merge::write_accounting_tables(&mut md, &accounting, &spread_cell)?;
    }
    write_atomic(&out.join("report.md"), md.as_bytes())?;
    eprintln!("report across seeds: {}", out.join("report.md").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Spread, verdict};

    #[test]
    fn overlapping_ranges_are_ties_and_separate_ones_wins() {
        let s = |l: &[f64]| Spread { losses: l.to_vec() };
        let (a, b, c) = (s(&[1.0, 1.2]), s(&[1.1, 1.5]), s(&[2.0, 2.1]));
        assert!(verdict(&["a", "b", "c"], &[&a, &b, &c]).contains("**a** has the lowest mean") );
        assert!(verdict(&["a", "b", "c"], &[&a, &b, &c]).contains("ties with b"));
        assert!(verdict(&["a", "c"], &[&a, &c]).starts_with("**a** wins"));
    }
}
