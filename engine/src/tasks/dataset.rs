//! A task's documents: the split's JSON Lines files (or JSON arrays, CSV, Parquet), read as Hugging Face
//! `datasets` reads them through Arrow: every document gets every column (a missing key is
//! null), and a column mixing integers and floats holds floats (`1` reads as `1.0`, which
//! changes how a template prints it).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

use super::config::DataFormat;

pub type Doc = Map<String, Value>;

/// The documents of a split, and its column names (lm-eval's `features`).
pub struct Split {
    pub docs: Vec<Doc>,
    pub columns: Vec<String>,
}

pub fn read_split(files: &[PathBuf], format: DataFormat, task: &str, split: &str) -> Result<Split> {
    let mut docs = Vec::new();
    for file in files {
        match format {
            DataFormat::Parquet => {
                docs.extend(parquet_rows(file).with_context(|| format!("task {task}: cannot read {} as Parquet", file.display()))?);
                continue;
            }
            DataFormat::Csv => {
                docs.extend(super::csv_data::csv_rows(file).with_context(|| format!("task {task}: cannot read {} as CSV", file.display()))?);
                continue;
            }
            DataFormat::Json => {}
        }
        let text = std::fs::read_to_string(file).with_context(|| format!("task {task}: cannot read data file {}", file.display()))?;
        if text.trim_start().starts_with('[') {
            let items: Vec<Value> = serde_json::from_str(&text).with_context(|| format!("task {task}: {} is not a JSON array of objects", file.display()))?;
            for (i, item) in items.into_iter().enumerate() {
                let Value::Object(doc) = item else { bail!("task {task}: {}: item {} is not a JSON object", file.display(), i + 1) };
                docs.push(doc);
            }
        } else {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let value: Value = serde_json::from_str(line).with_context(|| format!("task {task}: {} line {}: not valid JSON", file.display(), i + 1))?;
                let Value::Object(doc) = value else { bail!("task {task}: {} line {}: expected a JSON object", file.display(), i + 1) };
                docs.push(doc);
            }
        }
    }
    if docs.is_empty() {
        bail!("task {task}: split `{split}` is empty ({})", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    let mut columns: Vec<String> = Vec::new();
    for doc in &docs {
        for key in doc.keys() {
            if !columns.contains(key) {
                columns.push(key.clone());
            }
        }
    }
    for column in &columns {
        let mixed = docs.iter().any(|d| d.get(column).is_some_and(|v| v.is_f64())) && docs.iter().any(|d| d.get(column).is_some_and(|v| v.is_i64() || v.is_u64()));
        for doc in &mut docs {
            let value = doc.entry(column.clone()).or_insert(Value::Null);
            if mixed && (value.is_i64() || value.is_u64()) {
                *value = Value::from(value.as_f64().unwrap());
            }
        }
    }
    Ok(Split { docs, columns })
}

/// A Parquet file's rows as documents (its columns as fields).
fn parquet_rows(file: &std::path::Path) -> Result<Vec<Doc>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(file)?)?;
    let mut docs = Vec::new();
    for row in reader.get_row_iter(None)? {
        match row?.to_json_value() {
            Value::Object(doc) => docs.push(doc),
            other => bail!("a row is not a record: {other}"),
        }
    }
    Ok(docs)
}
