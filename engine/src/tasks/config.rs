//! A task file's keys, typed and checked: the subset of lm-evaluation-harness's `TaskConfig`
//! that describes tasks on local files. Every key that would change the scores and is not
//! supported is refused, naming the key and the file; keys that change nothing scored
//! (`metadata`, `tag`, decontamination) are accepted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

use super::yaml::load_task_yaml;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputType {
    /// One log-likelihood request per choice; `acc`, `acc_norm`.
    MultipleChoice,
    /// The log-likelihood of the target after the context; `perplexity`, `acc` (greedy).
    Loglikelihood,
    /// Greedy generation until a stop string; `exact_match`, `bleu`, `chrf`.
    GenerateUntil,
}

/// A `doc_to_*` value: a field name or Jinja template (decided per document, as lm-eval
/// decides: a column of the evaluated split is a field), an integer, or a literal list.
#[derive(Debug, Clone, PartialEq)]
pub enum DocField {
    Text(String),
    Index(i64),
    List(Vec<Value>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampler {
    /// `random.Random(1234).sample` over the few-shot split, shared across documents.
    Default,
    /// The first n documents of the few-shot split.
    FirstN,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    /// JSON Lines, or one JSON array of objects.
    Json,
    /// Parquet files (a row per document).
    Parquet,
}

#[derive(Debug, Clone)]
pub struct TaskConfig {
    /// The task file (for messages).
    pub file: PathBuf,
    pub name: String,
    pub alias: String,
    pub format: DataFormat,
    /// Split name -> its data files, resolved.
    pub data_files: BTreeMap<String, Vec<PathBuf>>,
    /// The split scored: `test_split`, else `validation_split`.
    pub eval_split: String,
    /// Where few-shot examples come from: `fewshot_split`, else the training split, else the
    /// validation split, else the test split (lm-eval's order).
    pub fewshot_pool_split: Option<String>,
    /// lm-eval leaves the document itself out of its few-shot examples exactly when the
    /// few-shot split and the test split are the same setting (both unset included).
    pub exclude_self_from_fewshot: bool,
    pub output_type: OutputType,
    pub doc_to_text: DocField,
    pub doc_to_target: DocField,
    pub doc_to_choice: Option<DocField>,
    pub description: String,
    pub target_delimiter: String,
    pub fewshot_delimiter: String,
    /// The delimiters inside few-shot examples (`fewshot_config` may override them).
    pub fewshot_target_delimiter: String,
    pub fewshot_fewshot_delimiter: String,
    pub sampler: Sampler,
    pub num_fewshot: usize,
    pub generation: GenerationKwargs,
    pub metrics: Vec<MetricSpec>,
    pub filters: Vec<FilterPipeline>,
    /// `metadata.version`, or "Yaml" (lm-eval's `versions` entry).
    pub version: Value,
    /// The keys as read (lm-eval's `configs` entry of the results file).
    pub raw: Map<String, Value>,
}

/// Keys that change nothing the engine scores.
const IGNORED_KEYS: &[&str] = &["metadata", "tag", "should_decontaminate", "doc_to_decontamination_query", "group_alias", "unsafe_code"];

const SUPPORTED_KEYS: &[&str] = &[
    "task", "task_alias", "dataset_path", "dataset_name", "dataset_kwargs", "training_split", "validation_split", "test_split",
    "fewshot_split", "doc_to_text", "doc_to_target", "doc_to_choice", "description", "target_delimiter", "fewshot_delimiter",
    "fewshot_config", "num_fewshot", "metric_list", "output_type", "generation_kwargs", "repeats", "filter_list",
];

impl TaskConfig {
    pub fn load(path: &Path) -> Result<Self> {
        let raw = load_task_yaml(path)?;
        Self::from_keys(raw, path)
    }

    pub fn from_keys(raw: Map<String, Value>, file: &Path) -> Result<Self> {
        let at = file.display().to_string();
        for (key, value) in &raw {
            if IGNORED_KEYS.contains(&key.as_str()) || SUPPORTED_KEYS.contains(&key.as_str()) {
                continue;
            }
            let why = match key.as_str() {
                "process_docs" | "process_results" => "a Python hook",
                "group" | "task_list" => "a group of tasks: list the task files instead",
                "use_prompt" => "a promptsource prompt",
                "gen_prefix" => "not supported by this engine",
                _ if value.is_null() => continue,
                _ => "not a key the engine knows (lm-evaluation-harness refuses unknown keys too)",
            };
            bail!("{at}: key `{key}` is {why}; the engine refuses keys that would change the scores");
        }
        let str_key = |key: &str| -> Result<Option<String>> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => bail!("{at}: `{key}` must be a string, found {other}"),
            }
        };
        let name = str_key("task")?.with_context(|| format!("{at}: missing `task` (the task's name)"))?;
        let alias = str_key("task_alias")?.unwrap_or_else(|| name.clone());

        let format = match str_key("dataset_path")?.as_deref() {
            Some("json") => DataFormat::Json,
            Some("parquet") => DataFormat::Parquet,
            Some(other) => bail!(
                "{at}: `dataset_path: {other}` is not supported: the engine reads local files only (`dataset_path: json` or `parquet` with `dataset_kwargs.data_files`); nothing is downloaded"
            ),
            None => bail!("{at}: missing `dataset_path` (expected `json` or `parquet` with `dataset_kwargs.data_files`)"),
        };
        if str_key("dataset_name")?.is_some() {
            bail!("{at}: `dataset_name` is not supported with local data files");
        }
        let data_files = data_files(&raw, file)?;
        let split = |key: &str| -> Result<Option<String>> {
            let Some(name) = str_key(key)? else { return Ok(None) };
            if !data_files.contains_key(&name) {
                bail!("{at}: `{key}: {name}` names a split that `dataset_kwargs.data_files` does not define (it defines: {})", data_files.keys().cloned().collect::<Vec<_>>().join(", "));
            }
            Ok(Some(name))
        };
        let (training, validation, test) = (split("training_split")?, split("validation_split")?, split("test_split")?);
        let eval_split = test.clone().or(validation.clone()).with_context(|| format!("{at}: give `test_split` or `validation_split` (the split to score)"))?;

        let output_type = match str_key("output_type")?.as_deref() {
            Some("multiple_choice") => OutputType::MultipleChoice,
            Some("loglikelihood") => OutputType::Loglikelihood,
            Some("generate_until") | None => OutputType::GenerateUntil,
            Some(other) => bail!("{at}: `output_type: {other}` is not supported (multiple_choice, loglikelihood, generate_until)"),
        };
        let doc_field = |key: &str| -> Result<Option<DocField>> {
            Ok(match raw.get(key) {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(DocField::Text(s.clone())),
                Some(Value::Number(n)) if n.is_i64() => Some(DocField::Index(n.as_i64().unwrap())),
                Some(Value::Array(items)) => Some(DocField::List(items.clone())),
                Some(Value::Object(map)) if key == "doc_to_choice" => Some(DocField::List(map.values().cloned().collect())),
                Some(other) => bail!("{at}: `{key}` must be a field name, a Jinja template, an integer or a list, found {other}"),
            })
        };
        let doc_to_text = doc_field("doc_to_text")?.with_context(|| format!("{at}: missing `doc_to_text`"))?;
        let doc_to_target = doc_field("doc_to_target")?.with_context(|| format!("{at}: missing `doc_to_target`"))?;
        let doc_to_choice = doc_field("doc_to_choice")?;
        if output_type == OutputType::MultipleChoice && doc_to_choice.is_none() {
            bail!("{at}: `output_type: multiple_choice` needs `doc_to_choice`");
        }
        if matches!(doc_to_text, DocField::Index(_) | DocField::List(_)) {
            bail!("{at}: `doc_to_text` as an integer (several contexts per document) is not supported");
        }
        let description = str_key("description")?.unwrap_or_default();
        let target_delimiter = str_key("target_delimiter")?.unwrap_or_else(|| " ".into());
        let fewshot_delimiter = str_key("fewshot_delimiter")?.unwrap_or_else(|| "\n\n".into());

        let fewshot_config = match raw.get("fewshot_config") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => bail!("{at}: `fewshot_config` must be a mapping, found {other}"),
        };
        let mut sampler = Sampler::Default;
        let mut fewshot_split = str_key("fewshot_split")?;
        let (mut fewshot_target_delimiter, mut fewshot_fewshot_delimiter) = (target_delimiter.clone(), fewshot_delimiter.clone());
        for (key, value) in &fewshot_config {
            match (key.as_str(), value) {
                ("sampler", Value::String(s)) if s == "default" => sampler = Sampler::Default,
                ("sampler", Value::String(s)) if s == "first_n" => sampler = Sampler::FirstN,
                ("split", Value::String(s)) => fewshot_split = Some(s.clone()),
                ("target_delimiter", Value::String(s)) => fewshot_target_delimiter = s.clone(),
                ("fewshot_delimiter", Value::String(s)) => fewshot_fewshot_delimiter = s.clone(),
                ("fewshot_indices", _) | (_, Value::Null) => {}
                _ => bail!("{at}: `fewshot_config.{key}: {value}` is not supported (sampler: default | first_n, split, target_delimiter, fewshot_delimiter)"),
            }
        }
        if let Some(s) = &fewshot_split
            && !data_files.contains_key(s)
        {
            bail!("{at}: the few-shot split `{s}` is not defined by `dataset_kwargs.data_files`");
        }
        let exclude_self_from_fewshot = fewshot_split == test;
        let fewshot_pool_split = fewshot_split.or(training).or(validation).or(test);
        let num_fewshot = match raw.get("num_fewshot") {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap() as usize,
            Some(other) => bail!("{at}: `num_fewshot` must be a non-negative integer, found {other}"),
        };
        if num_fewshot > 0 && fewshot_pool_split.is_none() {
            bail!("{at}: `num_fewshot: {num_fewshot}` needs a split to draw examples from (`fewshot_split`)");
        }
        match raw.get("repeats") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_u64() == Some(1) => {}
            Some(other) => bail!("{at}: `repeats: {other}` is not supported (greedy decoding repeats itself; use 1)"),
        }
        let generation = generation_kwargs(raw.get("generation_kwargs"), &fewshot_delimiter, &at)?;
        let metrics = metric_list(raw.get("metric_list"), output_type, &at)?;
        let filters = filter_list(raw.get("filter_list"), output_type, &at)?;
        let version = raw.get("metadata").and_then(|m| m.get("version")).cloned().unwrap_or_else(|| Value::String("Yaml".into()));
        Ok(Self {
            file: file.to_path_buf(),
            name,
            alias,
            format,
            data_files,
            eval_split,
            fewshot_pool_split,
            exclude_self_from_fewshot,
            output_type,
            doc_to_text,
            doc_to_target,
            doc_to_choice,
            description,
            target_delimiter,
            fewshot_delimiter,
            fewshot_target_delimiter,
            fewshot_fewshot_delimiter,
            sampler,
            num_fewshot,
            generation,
            metrics,
            filters,
            version,
            raw,
        })
    }
}

/// `dataset_kwargs.data_files`: `{split: file or [files]}`, or a file or list (one split,
/// `train`). A relative path is looked up from the current directory (as lm-eval does), then
/// from the task file's folder and each folder above it (so a task file naming its data from
/// the repository root works from anywhere).
fn data_files(raw: &Map<String, Value>, file: &Path) -> Result<BTreeMap<String, Vec<PathBuf>>> {
    let at = file.display();
    let kwargs = match raw.get("dataset_kwargs") {
        Some(Value::Object(m)) => m,
        _ => bail!("{at}: missing `dataset_kwargs.data_files` (the local files of each split)"),
    };
    for key in kwargs.keys() {
        if key != "data_files" {
            bail!("{at}: `dataset_kwargs.{key}` is not supported (only `data_files`)");
        }
    }
    let files = |value: &Value, split: &str| -> Result<Vec<PathBuf>> {
        let names: Vec<&str> = match value {
            Value::String(s) => vec![s],
            Value::Array(items) => items.iter().map(|v| v.as_str().with_context(|| format!("{at}: `data_files.{split}` must list file names"))).collect::<Result<_>>()?,
            other => bail!("{at}: `data_files.{split}` must be a file name or a list of them, found {other}"),
        };
        names
            .into_iter()
            .map(|name| {
                let path = PathBuf::from(name);
                let here = crate::config::resolve(&path);
                let task_folder = file.canonicalize().ok().and_then(|f| f.parent().map(Path::to_path_buf)).unwrap_or_default();
                std::iter::once(here)
                    .chain(task_folder.ancestors().map(|folder| folder.join(&path)))
                    .find(|p| p.is_file())
                    .with_context(|| {
                        format!("{at}: data file `{name}` of split `{split}` not found (looked in the current directory, the task file's folder and the folders above it)")
                    })
            })
            .collect()
    };
    Ok(match kwargs.get("data_files") {
        Some(Value::Object(splits)) => splits.iter().map(|(split, v)| Ok((split.clone(), files(v, split)?))).collect::<Result<_>>()?,
        Some(v @ (Value::String(_) | Value::Array(_))) => BTreeMap::from([("train".to_string(), files(v, "train")?)]),
        _ => bail!("{at}: missing `dataset_kwargs.data_files`"),
    })
}

fn generation_kwargs(value: Option<&Value>, fewshot_delimiter: &str, at: &str) -> Result<GenerationKwargs> {
    let mut kwargs = GenerationKwargs { until: vec![fewshot_delimiter.to_string()], max_gen_toks: 256 };
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(kwargs) };
    let Value::Object(map) = value else { bail!("{at}: `generation_kwargs` must be a mapping, found {value}") };
    let mut length_from: Option<(usize, &str)> = None;
    for (key, v) in map {
        match key.as_str() {
            "until" => {
                kwargs.until = match v {
                    Value::String(s) => vec![s.clone()],
                    Value::Array(items) => items.iter().map(|i| i.as_str().map(str::to_string).with_context(|| format!("{at}: `generation_kwargs.until` must list strings"))).collect::<Result<_>>()?,
                    other => bail!("{at}: `generation_kwargs.until` must be a string or a list of strings, found {other}"),
                }
            }
            // lm-eval takes the first of these that is given.
            "max_gen_toks" | "max_new_tokens" | "max_tokens" | "max_completion_tokens" => {
                let rank = ["max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens"].iter().position(|k| k == key).unwrap();
                let n = v.as_u64().with_context(|| format!("{at}: `generation_kwargs.{key}` must be a positive integer, found {v}"))? as usize;
                if length_from.is_none_or(|(_, k)| rank < ["max_gen_toks", "max_new_tokens", "max_tokens", "max_completion_tokens"].iter().position(|x| *x == k).unwrap()) {
                    length_from = Some((n, key));
                }
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
    if let Some((n, _)) = length_from {
        kwargs.max_gen_toks = n;
    }
    Ok(kwargs)
}

fn metric_list(value: Option<&Value>, output_type: OutputType, at: &str) -> Result<Vec<MetricSpec>> {
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

fn filter_list(value: Option<&Value>, output_type: OutputType, at: &str) -> Result<Vec<FilterPipeline>> {
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
