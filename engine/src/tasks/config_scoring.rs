//! The keys of a task file that say how it is scored: `generation_kwargs` (greedy only),
//! `metric_list` (the metrics the engine computes, with their options) and `filter_list`
//! (`regex`, `take_first`), typed and checked; what is not supported is refused by name.

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::config::OutputType;

#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    Acc,
    AccNorm,
    ExactMatch(ExactMatchOptions),
    Bleu,
    Chrf,
    Perplexity,
}

impl Metric {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Acc => "acc",
            Self::AccNorm => "acc_norm",
            Self::ExactMatch(_) => "exact_match",
            Self::Bleu => "bleu",
            Self::Chrf => "chrf",
            Self::Perplexity => "perplexity",
        }
    }

    /// lm-eval's default aggregation for the metric (the only one accepted).
    fn aggregation(&self) -> &'static str {
        match self {
            Self::Acc | Self::AccNorm | Self::ExactMatch(_) => "mean",
            Self::Bleu => "bleu",
            Self::Chrf => "chrf",
            Self::Perplexity => "perplexity",
        }
    }

    pub fn higher_is_better_default(&self) -> bool {
        !matches!(self, Self::Perplexity)
    }
}

/// `exact_match`'s options (Hugging Face evaluate's, as lm-eval calls them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExactMatchOptions {
    pub regexes_to_ignore: Vec<String>,
    pub ignore_case: bool,
    pub ignore_punctuation: bool,
    pub ignore_numbers: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricSpec {
    pub metric: Metric,
    pub higher_is_better: bool,
}

/// One step of a filter pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum FilterStep {
    /// `re.findall(pattern, response)[group_select]`, stripped; `fallback` when nothing matches.
    Regex { pattern: String, group_select: i64, fallback: String },
    TakeFirst,
}

/// A named pipeline: its name is the suffix of the metric keys (`exact_match,strict-match`).
#[derive(Debug, Clone, PartialEq)]
pub struct FilterPipeline {
    pub name: String,
    pub steps: Vec<FilterStep>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationKwargs {
    pub until: Vec<String>,
    pub max_gen_toks: usize,
}

pub(super) fn generation_kwargs(value: Option<&Value>, fewshot_delimiter: &str, at: &str) -> Result<GenerationKwargs> {
    let mut kwargs = GenerationKwargs { until: vec![fewshot_delimiter.to_string()], max_gen_toks: 256 };
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(kwargs) };
    let Value::Object(map) = value else { bail!("{at}: `generation_kwargs` must be a mapping, found {value}") };
    for (key, v) in map {
        match key.as_str() {
            "until" => {
                kwargs.until = match v {
                    Value::String(s) => vec![s.clone()],
                    Value::Array(items) => items.iter().map(|i| i.as_str().map(str::to_string).with_context(|| format!("{at}: `generation_kwargs.until` must list strings"))).collect::<Result<_>>()?,
                    other => bail!("{at}: `generation_kwargs.until` must be a string or a list of strings, found {other}"),
                }
            }
            // lm-eval takes the first of these that is given (read after the loop).
            "max_gen_toks" | "max_new_tokens" | "max_tokens" | "max_completion_tokens" => {
                v.as_u64().with_context(|| format!("{at}: `generation_kwargs.{key}` must be a positive integer, found {v}"))?;
            }
            "do_sample" => {
                if v.as_bool() == Some(true) {
                    bail!("{at}: `generation_kwargs.do_sample: true` is not supported: the engine scores greedy decoding");
                }
            }
            "temperature" => {
                if v.as_f64().is_none_or(|t| t != 0.0) && map.get("do_sample").and_then(Value::as_bool) != Some(false) {
                    bail!("{at}: `generation_kwargs.temperature: {v}` samples; the engine scores greedy decoding (temperature 0)");
                }
            }
            // Only used when sampling, which is refused above.
            "top_p" | "top_k" => {}
            _ => bail!("{at}: `generation_kwargs.{key}` is not supported (until, max_gen_toks, do_sample: false, temperature: 0)"),
        }
    }
    if let Some(n) = ["max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens"].iter().find_map(|k| map.get(*k).and_then(Value::as_u64)) {
        kwargs.max_gen_toks = n as usize;
    }
    Ok(kwargs)
}

pub(super) fn metric_list(value: Option<&Value>, output_type: OutputType, at: &str) -> Result<Vec<MetricSpec>> {
    let defaults = |names: &[&str]| names.iter().map(|n| metric_entry(&serde_json::json!({ "metric": n }), output_type, at)).collect::<Result<Vec<_>>>();
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return defaults(match output_type {
            OutputType::MultipleChoice => &["acc", "acc_norm"],
            OutputType::GenerateUntil => &["exact_match"],
            OutputType::Loglikelihood => &["perplexity", "acc"],
        });
    };
    let Value::Array(entries) = value else { bail!("{at}: `metric_list` must be a list of `- metric: NAME` entries") };
    entries.iter().map(|e| metric_entry(e, output_type, at)).collect()
}

fn metric_entry(entry: &Value, output_type: OutputType, at: &str) -> Result<MetricSpec> {
    let Value::Object(map) = entry else { bail!("{at}: each `metric_list` entry must be a mapping with `metric`, found {entry}") };
    let name = map.get("metric").and_then(Value::as_str).with_context(|| format!("{at}: a `metric_list` entry has no `metric` name (a `!function` metric is not supported)"))?;
    let mut options = ExactMatchOptions::default();
    let metric = match (name, output_type) {
        ("acc", OutputType::MultipleChoice | OutputType::Loglikelihood) => Metric::Acc,
        ("acc_norm", OutputType::MultipleChoice) => Metric::AccNorm,
        ("exact_match", OutputType::GenerateUntil | OutputType::MultipleChoice) => Metric::ExactMatch(ExactMatchOptions::default()),
        ("bleu", OutputType::GenerateUntil) => Metric::Bleu,
        ("chrf", OutputType::GenerateUntil) => Metric::Chrf,
        ("perplexity", OutputType::Loglikelihood) => Metric::Perplexity,
        (other, _) => bail!(
            "{at}: metric `{other}` is not supported for output_type {output_type:?} (supported: acc, acc_norm for multiple_choice; exact_match, bleu, chrf for generate_until; perplexity, acc for loglikelihood)"
        ),
    };
    let mut higher_is_better = metric.higher_is_better_default();
    for (key, v) in map {
        match key.as_str() {
            "metric" => {}
            "aggregation" => {
                if v.as_str() != Some(metric.aggregation()) {
                    bail!("{at}: metric `{name}` with `aggregation: {v}` is not supported (only its default, {})", metric.aggregation());
                }
            }
            "higher_is_better" => higher_is_better = v.as_bool().with_context(|| format!("{at}: `higher_is_better` of `{name}` must be true or false"))?,
            "ignore_case" | "ignore_punctuation" | "ignore_numbers" if matches!(metric, Metric::ExactMatch(_)) => {
                let flag = v.as_bool().with_context(|| format!("{at}: `{key}` of `{name}` must be true or false"))?;
                match key.as_str() {
                    "ignore_case" => options.ignore_case = flag,
                    "ignore_punctuation" => options.ignore_punctuation = flag,
                    _ => options.ignore_numbers = flag,
                }
            }
            "regexes_to_ignore" if matches!(metric, Metric::ExactMatch(_)) => {
                let items = v.as_array().with_context(|| format!("{at}: `regexes_to_ignore` must be a list of patterns"))?;
                for item in items {
                    let pattern = item.as_str().with_context(|| format!("{at}: `regexes_to_ignore` must be a list of patterns"))?;
                    regex::Regex::new(pattern).with_context(|| format!("{at}: `regexes_to_ignore` pattern {pattern:?} is not a regular expression this engine reads"))?;
                    options.regexes_to_ignore.push(pattern.to_string());
                }
            }
            _ => bail!("{at}: metric `{name}` has option `{key}`, which the engine does not support"),
        }
    }
    let metric = match metric {
        Metric::ExactMatch(_) => Metric::ExactMatch(options),
        m => m,
    };
    Ok(MetricSpec { metric, higher_is_better })
}

pub(super) fn filter_list(value: Option<&Value>, output_type: OutputType, at: &str) -> Result<Vec<FilterPipeline>> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(vec![FilterPipeline { name: "none".into(), steps: vec![FilterStep::TakeFirst] }]);
    };
    if output_type != OutputType::GenerateUntil {
        bail!("{at}: `filter_list` is supported for generate_until tasks only");
    }
    let Value::Array(entries) = value else { bail!("{at}: `filter_list` must be a list of `- name: ..., filter: [...]` entries") };
    entries
        .iter()
        .map(|entry| {
            let name = entry.get("name").and_then(Value::as_str).with_context(|| format!("{at}: a `filter_list` entry needs a `name`"))?;
            let steps = entry.get("filter").and_then(Value::as_array).with_context(|| format!("{at}: filter `{name}` needs a `filter:` list of steps"))?;
            let steps = steps
                .iter()
                .map(|step| {
                    let function = step.get("function").and_then(Value::as_str).with_context(|| format!("{at}: a step of filter `{name}` has no `function`"))?;
                    let keys: Vec<&String> = step.as_object().map(|m| m.keys().filter(|k| *k != "function").collect()).unwrap_or_default();
                    match function {
                        "take_first" => {
                            if let Some(k) = keys.first() {
                                bail!("{at}: filter `{name}`: `take_first` takes no option, found `{k}`");
                            }
                            Ok(FilterStep::TakeFirst)
                        }
                        "regex" => {
                            for k in &keys {
                                if !["regex_pattern", "group_select", "fallback"].contains(&k.as_str()) {
                                    bail!("{at}: filter `{name}`: `regex` option `{k}` is not supported (regex_pattern, group_select, fallback)");
                                }
                            }
                            let pattern = step.get("regex_pattern").and_then(Value::as_str).unwrap_or(r"#### (\-?[0-9\.\,]+)").to_string();
                            regex::Regex::new(&pattern).with_context(|| format!("{at}: filter `{name}`: pattern {pattern:?} is not a regular expression this engine reads"))?;
                            let group_select = match step.get("group_select") {
                                None => 0,
                                Some(v) => v.as_i64().with_context(|| format!("{at}: filter `{name}`: `group_select` must be an integer"))?,
                            };
                            let fallback = match step.get("fallback") {
                                None => "[invalid]".to_string(),
                                Some(v) => v.as_str().with_context(|| format!("{at}: filter `{name}`: `fallback` must be a string"))?.to_string(),
                            };
                            Ok(FilterStep::Regex { pattern, group_select, fallback })
                        }
                        other => bail!("{at}: filter `{name}`: function `{other}` is not supported (regex, take_first)"),
                    }
                })
                .collect::<Result<_>>()?;
            Ok(FilterPipeline { name: name.to_string(), steps })
        })
        .collect()
}
