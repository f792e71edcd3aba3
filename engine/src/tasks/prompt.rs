//! The prompt of a document as lm-evaluation-harness builds it without a chat template
//! (`ConfigurableTask.fewshot_context`): the description, then each few-shot example as its
//! text, the target delimiter, its answer and the few-shot delimiter, then the document's text.
//! Few-shot examples are drawn by CPython's `random.Random(1234).sample`, one generator per
//! task consumed document after document, so the engine shows the same examples lm-eval shows.

use anyhow::{Context, Result, bail};

use super::config::{Sampler, TaskConfig};
use super::dataset::Doc;
use super::python_random::PythonRandom;
use super::template::{Target, Templates};

/// lm-eval's default `fewshot_random_seed`.
pub const FEWSHOT_SEED: u64 = 1234;

/// One turn of the prompt (lm-eval's `Message`): who speaks, what, and what follows it when
/// the turns are joined as plain text.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    pub role: &'static str,
    pub content: String,
    pub delimiter: String,
}

pub struct FewshotSampler {
    rng: PythonRandom,
}

impl Default for FewshotSampler {
    fn default() -> Self {
        Self { rng: PythonRandom::new(FEWSHOT_SEED) }
    }
}

impl FewshotSampler {
    /// The few-shot documents for `doc`: `sample(pool, n + 1)` with the document itself taken
    /// out when it may be in the pool, else `sample(pool, n)`; `first_n` takes the first n.
    pub fn draw<'p>(&mut self, config: &TaskConfig, pool: &'p [Doc], doc: &Doc, n: usize) -> Result<Vec<&'p Doc>> {
        if n == 0 {
            return Ok(vec![]);
        }
        let exclude = config.exclude_self_from_fewshot;
        let not_self = |d: &&Doc| !exclude || *d != doc;
        if config.sampler == Sampler::FirstN {
            return Ok(pool.iter().filter(not_self).take(n).collect());
        }
        let draw = if exclude { n + 1 } else { n };
        if draw > pool.len() {
            bail!("task {}: {n} few-shot examples asked, the few-shot split has {} documents", config.name, pool.len());
        }
        let drawn: Vec<&Doc> = self.rng.sample(pool.len(), draw).into_iter().map(|i| &pool[i]).filter(not_self).take(n).collect();
        if drawn.len() == n {
            return Ok(drawn);
        }
        // The document was drawn more than once (duplicates in the pool): draw again without it.
        let others: Vec<&Doc> = pool.iter().filter(not_self).collect();
        if n > others.len() {
            bail!("task {}: {n} few-shot examples asked, only {} documents besides this one", config.name, others.len());
        }
        Ok(self.rng.sample(others.len(), n).into_iter().map(|i| others[i]).collect())
    }
}

/// The answer a few-shot example shows: the choice text for an index into choices, the first
/// of a list, else the target itself.
fn answer_text(target: Target, choices: Option<&[String]>) -> Result<String> {
    Ok(match (target, choices) {
        (Target::Index(i), Some(choices)) => choices.get(usize::try_from(i).unwrap_or(usize::MAX)).cloned().with_context(|| format!("target index {i} is outside the {} choices", choices.len()))?,
        (Target::Index(i), None) => i.to_string(),
        (Target::List(items), _) => items.first().map(super::template::python_str).unwrap_or_default(),
        (Target::Text(s), _) => s,
    })
}

/// The document's turns: system (the description), a user and an assistant turn per few-shot
/// example, then the document's own user turn.
pub fn turns(config: &TaskConfig, templates: &Templates, doc: &Doc, fewshot: &[&Doc]) -> Result<Vec<Turn>> {
    let mut turns = Vec::new();
    let description = if config.description.is_empty() { String::new() } else { templates.text(&config.description, doc)? };
    if !description.is_empty() {
        turns.push(Turn { role: "system", content: description, delimiter: String::new() });
    }
    for example in fewshot {
        let question = templates.doc_to_text(&config.doc_to_text, example)?;
        let choices = config.doc_to_choice.as_ref().map(|c| templates.doc_to_choice(c, example)).transpose()?;
        let target = templates.doc_to_target(&config.doc_to_target, example, config.doc_to_choice.is_some())?;
        let answer = answer_text(target, choices.as_deref())?;
        if answer.is_empty() {
            turns.push(Turn { role: "user", content: question, delimiter: String::new() });
        } else {
            turns.push(Turn { role: "user", content: question, delimiter: config.fewshot_target_delimiter.clone() });
            turns.push(Turn { role: "assistant", content: answer, delimiter: config.fewshot_fewshot_delimiter.clone() });
        }
    }
    let question = templates.doc_to_text(&config.doc_to_text, doc)?;
    turns.push(Turn { role: "user", content: question, delimiter: String::new() });
    Ok(turns)
}

/// The turns joined as plain text (no chat template).
pub fn plain_context(turns: &[Turn]) -> String {
    turns.iter().map(|t| format!("{}{}", t.content, t.delimiter)).collect()
}
