//! How a merge keeps or loses its experts' gains, in the report: the merge diagnosis (drift
//! of the shared weights, each member through the merge's steps), the accounting of the
//! comparison with the dense model term by term, and how sharply the routers route.

use std::fmt::Write as _;

use anyhow::Result;

use super::config::{Merge, MergeMethod};
use super::entries::ModelId;
use super::plan::Plan;
use super::report_record::AccountingRecord;
use super::report::Row;
use super::report_inputs::ReportInputs;
use crate::eval::DomainRouting;

/// The domain a member was trained on (its largest data weight); None for the generalist.
fn own_domain(plan: &Plan<'_>, member: &str) -> Option<String> {
    let expert = plan.recipe.find_expert(member)?;
    expert.data.iter().max_by(|a, b| a.1.total_cmp(&b.1)).map(|d| d.0.clone())
}

fn row(rows: &[Row], model: ModelId) -> Option<&Row> {
    rows.iter().find(|r| r.entry.model == model)
}

/// A model's loss on `domain`, or its mean loss for None.
fn loss_on(row: Option<&Row>, domain: &Option<String>) -> Option<f64> {
    let row = row?;
    match domain {
        Some(d) => row.eval.domains.iter().find(|x| &x.domain == d).map(|x| x.loss),
        None => Some(row.mean_loss()),
    }
}

fn ppl(loss: Option<f64>) -> String {
    loss.map_or("-".into(), |l| format!("{:.2}", l.exp()))
}

/// The member alone: its expert, or the seed for the generalist (None).
fn alone<'a>(rows: &'a [Row], expert: Option<&str>) -> Option<&'a Row> {
    match expert {
        Some(name) => row(rows, ModelId::Expert(name.to_string())),
        None => row(rows, ModelId::Seed),
    }
}

fn first_merge<'a>(plan: &'a Plan<'_>, is: impl Fn(&MergeMethod) -> bool) -> Option<&'a Merge> {
    plan.recipe.merges.iter().find(|m| is(&m.method))
}

/// The BTX merge diagnosis: how far each member's shared (non-FFN) weights drifted from the
/// seed and from their average, and each member's perplexity on its own domain alone, then
/// with its FFN inside the averaged shared weights (what MiX builds), then through the MoE;
/// a table for each set of experts the BTX merges mix.
pub(super) fn write_diagnosis(md: &mut String, plan: &Plan<'_>, inputs: &ReportInputs) -> Result<()> {
    let merges = plan.diagnosed_merges();
    if merges.is_empty() {
        return Ok(());
    }
    let rows = &inputs.rows;
    let (seed, _) = plan.seed()?;
    writeln!(md, "\n## Merge diagnosis\n")?;
    writeln!(md, "Shared weights = every non-FFN tensor (attention, norms, embeddings), which MiX averages. Drift from seed = ||member - seed|| / ||seed||, drift from average = ||member - average|| / ||member||, over all of them. Perplexity on the member's own domain (the seed: mean over domains): the member alone, its FFN inside the averaged shared weights (the MoE when every token goes to it), and the BTX model before and after its finetune.\n")?;
    for btx in merges {
        writeln!(md, "`{}`:\n", btx.name)?;
        writeln!(md, "| member | domain | drift from seed | drift from average | alone | in averaged shared weights | BTX before finetune | BTX |\n|---|---|---:|---:|---:|---:|---:|---:|")?;
        for member in plan.btx_members(btx, &seed) {
            let d = inputs.drift(&member.key)?;
            let domain = member.expert.as_deref().and_then(|e| own_domain(plan, e));
            writeln!(
                md,
                "| {} | {} | {:.3} | {:.3} | {} | {} | {} | {} |",
                member.key,
                domain.as_deref().unwrap_or("mean"),
                d.from_seed,
                d.from_average,
                ppl(loss_on(alone(rows, member.expert.as_deref()), &domain)),
                ppl(loss_on(row(rows, ModelId::Transplant(member.key.clone())), &domain)),
                ppl(loss_on(row(rows, ModelId::Unfinetuned(btx.name.clone())), &domain)),
                ppl(loss_on(row(rows, ModelId::Merged(btx.name.clone())), &domain)),
            )?;
        }
        writeln!(md)?;
    }
    Ok(())
}

/// The comparison with the compute-matched dense model, term by term on each expert's own
/// domain, in validation loss (nats; the terms add up):
///   BTX - dense = -prize + averaging cost + routing cost - finetune gain
/// prize = dense - expert alone; averaging cost = its FFN in the averaged shared weights -
/// alone; routing cost = BTX before finetune - that; finetune gain = before - after. BAM's
/// chain has no transplant: its routing cost runs from the expert alone. Every BTX merge
/// (each against its own experts' transplants, with the diagnosis) and the first BAM.
pub(super) fn accounting(plan: &Plan<'_>, rows: &[Row]) -> Vec<AccountingRecord> {
    let r = plan.recipe;
    let btx = if r.diagnose_merge { r.merges.iter().filter(|m| m.method == MergeMethod::Btx).collect() } else { vec![] };
    let bam = first_merge(plan, |m| matches!(m, MergeMethod::Bam { .. }));
    let merges: Vec<(&Merge, bool)> = btx.into_iter().map(|m| (m, true)).chain(bam.map(|m| (m, false))).collect();
    let dense = row(rows, ModelId::Dense);
    let diff = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a - b);
    let mut records = Vec::new();
    for (merge, transplant) in merges {
        for e in r.experts_of(merge) {
            let domain = own_domain(plan, &e.name);
            let alone = loss_on(alone(rows, Some(&e.name)), &domain);
            let inside = if transplant { loss_on(row(rows, ModelId::Transplant(e.name.clone())), &domain) } else { alone };
            let before = loss_on(row(rows, ModelId::Unfinetuned(merge.name.clone())), &domain);
            let after = loss_on(row(rows, ModelId::Merged(merge.name.clone())), &domain);
            let dense = loss_on(dense, &domain);
            records.push(AccountingRecord {
                averaging_cost: if transplant { diff(inside, alone) } else { None },
                domain: domain.unwrap_or_else(|| "mean".into()),
                expert: e.name,
                finetune_gain: diff(before, after),
                merge: merge.name.clone(),
                prize: diff(dense, alone),
                routing_cost: diff(before, inside),
                versus_dense: diff(after, dense),
            });
        }
    }
    records
}

/// The accounting's explanation, for this report and the one across seeds.
pub(super) const ACCOUNTING_TEXT: &str = "On each expert's own domain, validation loss differences in nats (negative = better than dense). BTX - dense = -prize + averaging cost + routing cost - finetune gain: the prize is the expert alone against the compute-matched dense model, the averaging cost what putting its FFN inside the averaged shared weights loses, the routing cost what the MoE before its finetune loses beyond that, the finetune gain what the finetune wins back. BAM keeps attention per expert: no transplant is measured, its routing cost runs from the expert alone.";

/// "Where the gains go": a table per merge, each cell given by `cell` from the records of
/// that merge, expert and term (one record per run: one here, one per seed across seeds).
pub(super) fn write_accounting_tables(md: &mut String, runs: &[Vec<AccountingRecord>], cell: &dyn Fn(&[Option<f64>]) -> String) -> Result<()> {
    let Some(first) = runs.first().filter(|r| !r.is_empty()) else { return Ok(()) };
    let mut merge = None;
    for record in first {
        if merge != Some(&record.merge) {
            writeln!(md, "{}`{}`:\n", if merge.is_some() { "\n" } else { "" }, record.merge)?;
            writeln!(md, "| expert | domain | prize | averaging cost | routing cost | finetune gain | {} - dense |\n|---|---|---:|---:|---:|---:|---:|", record.merge)?;
            merge = Some(&record.merge);
        }
        let same: Vec<&AccountingRecord> = runs.iter().filter_map(|run| run.iter().find(|x| x.merge == record.merge && x.expert == record.expert)).collect();
        let term = |f: fn(&AccountingRecord) -> Option<f64>| cell(&same.iter().map(|x| f(x)).collect::<Vec<_>>());
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} |",
            record.expert,
            record.domain,
            term(|x| x.prize),
            term(|x| x.averaging_cost),
            term(|x| x.routing_cost),
            term(|x| x.finetune_gain),
            term(|x| x.versus_dense),
        )?;
    }
    writeln!(md)?;
    Ok(())
}

pub(super) fn write_accounting(md: &mut String, records: &[AccountingRecord]) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    writeln!(md, "\n## Where the gains go\n\n{ACCOUNTING_TEXT}\n")?;
    let cell = |values: &[Option<f64>]| values.first().copied().flatten().map_or("-".to_string(), |v| format!("{v:+.3}"));
    write_accounting_tables(md, &[records.to_vec()], &cell)
}

/// How sharply each BTX or BAM merge routes, before and after its finetune, per layer: the
/// share of each domain's tokens its own expert receives (top-k: k x its share of the
/// assignments, at most 1; exact when no assignment is dropped) and the routers' mean
/// entropy over the domains (nats).
pub(super) fn write_sharpness(md: &mut String, plan: &Plan<'_>, inputs: &ReportInputs) -> Result<()> {
    let rows = &inputs.rows;
    let merges: Vec<&Merge> = plan.recipe.merges.iter().filter(|m| m.method.mixes_experts()).collect();
    let mut wrote_header = false;
    for merge in merges {
        let Some(config) = inputs.merge_config(&merge.name) else { continue };
        let Some(moe) = config.moe.clone() else { continue };
        let names = plan.expert_names(merge);
        // Each expert domain and the experts (split parts included) trained on it.
        let owned: Vec<(String, Vec<usize>)> = plan
            .recipe
            .experts_of(merge)
            .iter()
            .filter_map(|e| {
                let domain = own_domain(plan, &e.name)?;
                let parts: Vec<usize> = names.iter().enumerate().filter(|(_, n)| *n == &e.name || n.starts_with(&format!("{}.", e.name))).map(|(i, _)| i).collect();
                (!parts.is_empty()).then_some((domain, parts))
            })
            .collect();
        let models = [ModelId::Unfinetuned(merge.name.clone()), ModelId::Merged(merge.name.clone())];
        let evaluated: Vec<&Row> = models.iter().filter_map(|m| row(rows, m.clone())).collect();
        if owned.is_empty() || evaluated.is_empty() {
            continue;
        }
        if !wrote_header {
            writeln!(md, "\n## Routing sharpness\n")?;
            writeln!(md, "Per layer: the share of each domain's tokens that reach the expert trained on it (top-k routing sends each token to k experts: k x the expert's share of the assignments, at most 1), and the routers' entropy per token, mean over the domains (nats). A router that cannot tell its E experts apart gives every domain k/E and entropy ln E.\n")?;
            wrote_header = true;
        }
        let e = names.len();
        writeln!(md, "`{}` ({e} experts, top-{}: uniform share {:.2}, entropy {:.2}):\n", merge.name, moe.top_k, (moe.top_k as f64 / e as f64).min(1.0), (e as f64).ln())?;
        let domains: Vec<&str> = owned.iter().map(|(d, _)| d.as_str()).collect();
        writeln!(md, "| layer | model | {} | entropy |\n|---:|---|{}---:|", domains.join(" | "), "---:|".repeat(domains.len()))?;
        for layer in 0..config.n_layers {
            for r in &evaluated {
                let shares: Vec<String> = owned.iter().map(|(d, parts)| own_share(r, d, parts, layer, moe.top_k).map_or("-".into(), |s| format!("{s:.2}"))).collect();
                let entropies: Vec<f64> = r.eval.domains.iter().filter_map(|d| d.router_entropy.get(layer).copied()).collect();
                let entropy = if entropies.is_empty() { "-".into() } else { format!("{:.2}", entropies.iter().sum::<f64>() / entropies.len() as f64) };
                let when = if matches!(r.entry.model, ModelId::Unfinetuned(_)) { "before finetune" } else { "finetuned" };
                writeln!(md, "| {layer} | {when} | {} | {entropy} |", shares.join(" | "))?;
            }
        }
        writeln!(md)?;
    }
    Ok(())
}

/// The share of `domain`'s tokens the experts `parts` received in `layer`.
fn own_share(row: &Row, domain: &str, parts: &[usize], layer: usize, top_k: usize) -> Option<f64> {
    let eval = row.eval.domains.iter().find(|d| d.domain == domain)?;
    let Some(DomainRouting::Layers(layers)) = &eval.routing else { return None };
    let shares = layers.get(layer)?;
    Some((parts.iter().filter_map(|&p| shares.get(p)).sum::<f64>() * top_k as f64).min(1.0))
}
