//! Task data in CSV, typed as Hugging Face `datasets` types it (`load_dataset("csv")`: pandas'
//! `read_csv`, then Arrow). The first row names the columns; a cell pandas reads as missing
//! (empty, `NA`, `null`, `nan`, ...) is null; a column whose other cells are all integers
//! holds integers (floats when it has a missing cell, as pandas' NaN makes it), all numbers
//! floats, all `True`/`False` booleans; any other column holds strings, cells as written
//! (`007` stays `007`).

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

use super::dataset::Doc;

/// pandas' default `na_values` (`pandas._libs.parsers.STR_NA_VALUES`).
const MISSING: [&str; 19] = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"];

/// A column's type, from all its cells.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Column {
    Integer,
    Float,
    Bool,
    Text,
}

fn is_missing(cell: &str) -> bool {
    MISSING.contains(&cell)
}

fn bool_of(cell: &str) -> Option<bool> {
    match cell {
        "True" | "TRUE" | "true" => Some(true),
        "False" | "FALSE" | "false" => Some(false),
        _ => None,
    }
}

fn column_type<'a>(cells: impl Iterator<Item = &'a str> + Clone) -> Column {
    let present = cells.clone().filter(|c| !is_missing(c));
    if present.clone().all(|c| bool_of(c).is_some()) {
        return Column::Bool;
    }
    // pandas holds a missing integer as NaN: the column becomes floats.
    if present.clone().all(|c| c.trim().parse::<i64>().is_ok()) {
        return if cells.into_iter().any(is_missing) { Column::Float } else { Column::Integer };
    }
    if present.clone().all(|c| c.trim().parse::<f64>().is_ok()) {
        return Column::Float;
    }
    Column::Text
}

/// The rows of a CSV file with a header, as documents.
pub fn csv_rows(file: &Path) -> Result<Vec<Doc>> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_path(file)?;
    let header: Vec<String> = reader.headers()?.iter().map(str::to_string).collect();
    if header.is_empty() {
        bail!("no header row");
    }
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (i, record) in reader.records().enumerate() {
        // Line 1 is the header; a record may span lines (its position says where it starts).
        let record = record.with_context(|| format!("record {} is not valid CSV", i + 1))?;
        if record.len() != header.len() {
            let line = record.position().map_or(i + 2, |p| p.line() as usize);
            bail!("line {line}: {} fields where the header has {}", record.len(), header.len());
        }
        rows.push(record.iter().map(str::to_string).collect());
    }
    let types: Vec<Column> = (0..header.len()).map(|c| column_type(rows.iter().map(move |r| r[c].as_str()))).collect();
    let docs = rows
        .iter()
        .map(|row| {
            let mut doc = Map::new();
            for ((name, cell), kind) in header.iter().zip(row).zip(&types) {
                doc.insert(name.clone(), cell_value(cell, *kind));
            }
            doc
        })
        .collect();
    Ok(docs)
}

fn cell_value(cell: &str, kind: Column) -> Value {
    if is_missing(cell) {
        return Value::Null;
    }
    match kind {
        Column::Integer => Value::from(cell.trim().parse::<i64>().expect("typed as integer")),
        Column::Float => Value::from(cell.trim().parse::<f64>().expect("typed as float")),
        Column::Bool => Value::from(bool_of(cell).expect("typed as bool")),
        Column::Text => Value::from(cell),
    }
}
