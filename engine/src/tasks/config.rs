//! A task file's keys, typed and checked: the subset of lm-evaluation-harness's `TaskConfig`
//! that describes tasks on local files. Every key that would change the scores and is not
//! supported is refused, naming the key and the file; keys that change nothing scored
//! (`metadata`, `tag`, decontamination) are accepted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

use super::yaml::load_task_yaml;
pub use super::config_scoring::{ExactMatchOptions, FilterPipeline, FilterStep, GenerationKwargs, Metric, MetricSpec};
use super::config_scoring::{filter_list, generation_kwargs, metric_list};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    /// JSON Lines, or one JSON array of objects.
    Json,
    /// Parquet files (a row per document).
    Parquet,
    /// CSV files with a header row, typed as `datasets` types them (`tasks/csv_data.rs`).
    Csv,
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
        refuse_unsupported_keys(&raw, &at)?;
        let str_key = |key: &str| str_key(&raw, key, &at);
        let name = str_key("task")?.with_context(|| format!("{at}: missing `task` (the task's name)"))?;
        let alias = str_key("task_alias")?.unwrap_or_else(|| name.clone());
        let format = data_format(&raw, &at)?;
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
        let doc_field = |key: &str| doc_field(&raw, key, &at);
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

        let fewshot = FewshotSettings::read(&raw, str_key("fewshot_split")?, &target_delimiter, &fewshot_delimiter, &at)?;
        let fewshot_split = fewshot.split;
        if let Some(s) = &fewshot_split
            && !data_files.contains_key(s)
        {
            bail!("{at}: the few-shot split `{s}` is not defined by `dataset_kwargs.data_files`");
        }
        let exclude_self_from_fewshot = fewshot_split == test;
        let fewshot_pool_split = fewshot_split.or(training).or(validation).or(test);
        let num_fewshot = num_fewshot(&raw, &at)?;
        if num_fewshot > 0 && fewshot_pool_split.is_none() {
            bail!("{at}: `num_fewshot: {num_fewshot}` needs a split to draw examples from (`fewshot_split`)");
        }
        check_repeats(&raw, &at)?;
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
            fewshot_target_delimiter: fewshot.target_delimiter,
            fewshot_fewshot_delimiter: fewshot.fewshot_delimiter,
            sampler: fewshot.sampler,
            num_fewshot,
            generation,
            metrics,
            filters,
            version,
            raw,
        })
    }
}

/// A string key's value (absent or null: None).
fn str_key(raw: &Map<String, Value>, key: &str, at: &str) -> Result<Option<String>> {
    match raw.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => bail!("{at}: `{key}` must be a string, found {other}"),
    }
}

/// `dataset_path`: local JSON, CSV or Parquet files (no Hub dataset, no `dataset_name`).
fn data_format(raw: &Map<String, Value>, at: &str) -> Result<DataFormat> {
    let format = match str_key(raw, "dataset_path", at)?.as_deref() {
        Some("json") => DataFormat::Json,
        Some("parquet") => DataFormat::Parquet,
        Some("csv") => DataFormat::Csv,
        Some(other) => bail!(
            "{at}: `dataset_path: {other}` is not supported: the engine reads local files only (`dataset_path: json`, `csv` or `parquet` with `dataset_kwargs.data_files`); nothing is downloaded"
        ),
        None => bail!("{at}: missing `dataset_path` (expected `json`, `csv` or `parquet` with `dataset_kwargs.data_files`)"),
    };
    if str_key(raw, "dataset_name", at)?.is_some() {
        bail!("{at}: `dataset_name` is not supported with local data files");
    }
    Ok(format)
}

/// `doc_to_text`, `doc_to_target` or `doc_to_choice`: a field or template, an index or a list
/// (`doc_to_choice` also a mapping, its values).
fn doc_field(raw: &Map<String, Value>, key: &str, at: &str) -> Result<Option<DocField>> {
    Ok(match raw.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(DocField::Text(s.clone())),
        Some(Value::Number(n)) if n.is_i64() => Some(DocField::Index(n.as_i64().unwrap())),
        Some(Value::Array(items)) => Some(DocField::List(items.clone())),
        Some(Value::Object(map)) if key == "doc_to_choice" => Some(DocField::List(map.values().cloned().collect())),
        Some(other) => bail!("{at}: `{key}` must be a field name, a Jinja template, an integer or a list, found {other}"),
    })
}

/// `num_fewshot` (0 when absent).
fn num_fewshot(raw: &Map<String, Value>, at: &str) -> Result<usize> {
    Ok(match raw.get("num_fewshot") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) if n.as_u64().is_some() => n.as_u64().unwrap() as usize,
        Some(other) => bail!("{at}: `num_fewshot` must be a non-negative integer, found {other}"),
    })
}

/// `repeats`: only 1 (greedy decoding repeats itself).
fn check_repeats(raw: &Map<String, Value>, at: &str) -> Result<()> {
    match raw.get("repeats") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(()),
        Some(other) => bail!("{at}: `repeats: {other}` is not supported (greedy decoding repeats itself; use 1)"),
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

/// Refuses a key that would change the scores and is not supported, saying why.
fn refuse_unsupported_keys(raw: &Map<String, Value>, at: &str) -> Result<()> {
    for (key, value) in raw {
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
    Ok(())
}

/// `fewshot_config` over the task's own few-shot settings (lm-eval's `FewshotConfig`).
struct FewshotSettings {
    sampler: Sampler,
    split: Option<String>,
    target_delimiter: String,
    fewshot_delimiter: String,
}

impl FewshotSettings {
    fn read(raw: &Map<String, Value>, fewshot_split: Option<String>, target_delimiter: &str, fewshot_delimiter: &str, at: &str) -> Result<Self> {
        let fewshot_config = match raw.get("fewshot_config") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => bail!("{at}: `fewshot_config` must be a mapping, found {other}"),
        };
        let mut settings = Self { sampler: Sampler::Default, split: fewshot_split, target_delimiter: target_delimiter.to_string(), fewshot_delimiter: fewshot_delimiter.to_string() };
        for (key, value) in &fewshot_config {
            match (key.as_str(), value) {
                ("sampler", Value::String(s)) if s == "default" => settings.sampler = Sampler::Default,
                ("sampler", Value::String(s)) if s == "first_n" => settings.sampler = Sampler::FirstN,
                ("split", Value::String(s)) => settings.split = Some(s.clone()),
                ("target_delimiter", Value::String(s)) => settings.target_delimiter = s.clone(),
                ("fewshot_delimiter", Value::String(s)) => settings.fewshot_delimiter = s.clone(),
                ("fewshot_indices", _) | (_, Value::Null) => {}
                _ => bail!("{at}: `fewshot_config.{key}: {value}` is not supported (sampler: default | first_n, split, target_delimiter, fewshot_delimiter)"),
            }
        }
        Ok(settings)
    }
}
