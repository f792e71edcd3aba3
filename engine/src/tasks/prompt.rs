//! The prompt of a document as lm-evaluation-harness builds it (`ConfigurableTask.fewshot_context`):
//! without a chat template, the description, then each few-shot example as its text, the target
//! delimiter, its answer and the few-shot delimiter, then the document's text; with one
//! (`--apply_chat_template`), those turns rendered by the tokenizer's template, collapsed into
//! one user turn (`multiturn_to_singleturn`) or, with `--fewshot_as_multiturn`, each its own.
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

/// lm-eval's `maybe_delimit`: `prefix` and `suffix` joined by `delimiter` unless either has
/// whitespace at the join (or is empty).
fn maybe_delimit(prefix: &str, suffix: &str, delimiter: &str) -> String {
    let space = super::is_python_space;
    match (prefix.chars().last(), suffix.chars().next()) {
        (None, _) => suffix.to_string(),
        (_, None) => prefix.to_string(),
        (Some(end), Some(start)) if space(end) || space(start) => format!("{prefix}{suffix}"),
        _ => format!("{prefix}{delimiter}{suffix}"),
    }
}

/// The document's turns: system (lm-eval's `--system_instruction` and the description, joined
/// by the few-shot delimiter), a user and an assistant turn per few-shot example, then the
/// document's own user turn.
pub fn turns(config: &TaskConfig, templates: &Templates, doc: &Doc, fewshot: &[&Doc], system_instruction: Option<&str>) -> Result<Vec<Turn>> {
    let mut turns = Vec::new();
    let description = if config.description.is_empty() { String::new() } else { templates.text(&config.description, doc)? };
    let system = maybe_delimit(system_instruction.unwrap_or_default(), &description, &config.fewshot_delimiter);
    if !system.is_empty() {
        turns.push(Turn { role: "system", content: system, delimiter: String::new() });
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

/// lm-eval's `--apply_chat_template`: the tokenizer's template, and whether few-shot examples
/// stay turns of their own (`--fewshot_as_multiturn`).
#[derive(Clone)]
pub struct ChatPrompt {
    pub template: std::sync::Arc<crate::chat::ChatTemplate>,
    pub fewshot_as_multiturn: bool,
}

impl std::fmt::Debug for ChatPrompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChatPrompt({}, fewshot_as_multiturn: {})", self.template.origin, self.fewshot_as_multiturn)
    }
}

/// The turns rendered by the chat template with the assistant's turn opened (HFLM's
/// `apply_chat_template`, `add_generation_prompt=True`); as lm-eval, a template that refuses
/// the system role is rendered again without it.
pub fn chat_context(turns: &[Turn], chat: &ChatPrompt) -> Result<String> {
    let message = |role: &str, content: &str| serde_json::json!({"role": role, "content": content});
    let messages: Vec<serde_json::Value> = if chat.fewshot_as_multiturn {
        turns.iter().map(|t| message(t.role, &t.content)).collect()
    } else {
        // multiturn_to_singleturn: the system turn, then every other turn's text (with its
        // delimiter, the last one's dropped) as one user turn.
        let (system, rest) = match turns.split_first() {
            Some((first, rest)) if first.role == "system" => (Some(first), rest),
            _ => (None, turns),
        };
        let last = rest.len().saturating_sub(1);
        let text: String = rest.iter().enumerate().map(|(i, t)| if i == last { t.content.clone() } else { format!("{}{}", t.content, t.delimiter) }).collect();
        system.map(|s| message("system", &s.content)).into_iter().chain([message("user", &text)]).collect()
    };
    let variables = serde_json::Map::new();
    match chat.template.render(&messages, true, &variables) {
        Ok(text) => Ok(text),
        Err(_) if messages.iter().any(|m| m["role"] == "system") => {
            let without: Vec<serde_json::Value> = messages.into_iter().filter(|m| m["role"] != "system").collect();
            chat.template.render(&without, true, &variables)
        }
        Err(e) => Err(e),
    }
}
