//! The documentation cannot drift from the formats: every RON example in the README and in
//! the recipes' comments parses, spliced into the file it belongs to, and every concrete
//! `btx` command line in the README parses.
//!
//! A RON example is a code span `key: value` (in a `//` comment of a .ron file, or in the
//! README). It replaces the `key: ...` line of its own file (the README's: of the first
//! shipped recipe or training config that has that key), and the result must load.

use std::path::{Path, PathBuf};

use btx::recipe::Recipe;
use btx::train::TrainConfig;
use clap::Parser;

use crate::common::repo_root;

/// The code spans of `text` (between single backticks).
fn code_spans(text: &str) -> Vec<String> {
    text.lines().flat_map(|l| l.split('`').skip(1).step_by(2).map(str::to_string).collect::<Vec<_>>()).collect()
}

/// `key: value` spans, where key is a RON field name.
fn ron_examples(spans: &[String]) -> Vec<(String, String)> {
    spans
        .iter()
        .filter_map(|s| {
            let (key, value) = s.split_once(": ")?;
            (!key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')).then(|| (key.to_string(), value.to_string()))
        })
        .collect()
}

/// `text` with its first uncommented `key: ...` entry (the line, and the lines after it
/// until its brackets close) replaced by `key: value,`; or, for a key that starts no line
/// (a field inside a list item, such as a merge's `method`), its first value within a line.
fn splice(text: &str, key: &str, value: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.trim_start().starts_with(&format!("{key}:"))) else {
        return splice_inline(text, key, value);
    };
    let depth = |l: &str| l.chars().map(|c| match c { '(' | '[' => 1, ')' | ']' => -1, _ => 0 }).sum::<i32>();
    let (mut end, mut open) = (start, depth(lines[start]));
    while open > 0 && end + 1 < lines.len() {
        end += 1;
        open += depth(lines[end]);
    }
    let indent = &lines[start][..lines[start].len() - lines[start].trim_start().len()];
    let mut out: Vec<String> = lines[..start].iter().map(|l| l.to_string()).collect();
    out.push(format!("{indent}{key}: {value},"));
    out.extend(lines[end + 1..].iter().map(|l| l.to_string()));
    Some(out.join("\n"))
}

/// `text` with the value of the first uncommented `key: VALUE` inside a line (up to the `,`
/// or closing bracket that ends it) replaced by `value`.
fn splice_inline(text: &str, key: &str, value: &str) -> Option<String> {
    let pattern = format!("{key}: ");
    let mut out = Vec::new();
    let mut done = false;
    for line in text.lines() {
        let at = line.find(&pattern).filter(|&i| !done && !line.trim_start().starts_with("//") && (i == 0 || !line.as_bytes()[i - 1].is_ascii_alphanumeric() && line.as_bytes()[i - 1] != b'_'));
        let Some(at) = at else {
            out.push(line.to_string());
            continue;
        };
        let from = at + pattern.len();
        let mut depth = 0i32;
        let end = line[from..]
            .char_indices()
            .find(|&(_, c)| {
                depth += match c { '(' | '[' => 1, ')' | ']' => -1, _ => 0 };
                depth < 0 || (depth == 0 && c == ',')
            })
            .map_or(line.len(), |(i, _)| from + i);
        out.push(format!("{}{value}{}", &line[..from], &line[end..]));
        done = true;
    }
    done.then(|| out.join("\n"))
}

fn ron_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["recipes", "recipes/train", "bench", "bench/device", "bench/real"] {
        for e in std::fs::read_dir(repo_root().join(dir)).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "ron") {
                files.push(e.path());
            }
        }
    }
    files.sort();
    files
}

/// Loads `text` as the kind of file `original` is (a recipe in recipes/, a training config
/// elsewhere: recipes/train/ and the benchmarks' models).
fn load_as(original: &Path, text: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(original.file_name().unwrap());
    std::fs::write(&path, text)?;
    if original.parent().is_some_and(|p| p.ends_with("recipes")) {
        Recipe::load(&path).map(|_| ())
    } else {
        TrainConfig::load(&path).map(|_| ())
    }
}

#[test]
fn every_shipped_recipe_and_config_loads() {
    for file in ron_files() {
        load_as(&file, &std::fs::read_to_string(&file).unwrap()).unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
    }
}

#[test]
fn ron_examples_in_recipe_comments_parse() {
    let mut checked = 0;
    for file in ron_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let comments: String = text.lines().filter(|l| l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        for (key, value) in ron_examples(&code_spans(&comments)) {
            let spliced = splice(&text, &key, &value).unwrap_or_else(|| panic!("{}: example `{key}: {value}` names no field of the file", file.display()));
            load_as(&file, &spliced).unwrap_or_else(|e| panic!("{}: example `{key}: {value}` does not load: {e:#}", file.display()));
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} examples found");
}

#[test]
fn ron_examples_in_the_readme_parse() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let files = ron_files();
    let examples = ron_examples(&code_spans(&readme));
    assert!(!examples.is_empty());
    for (key, value) in examples {
        let loaded = files.iter().find_map(|f| {
            let spliced = splice(&std::fs::read_to_string(f).unwrap(), &key, &value)?;
            Some(load_as(f, &spliced).map_err(|e| format!("{}: {e:#}", f.display())))
        });
        match loaded {
            Some(Ok(())) => {}
            Some(Err(e)) => panic!("README example `{key}: {value}` does not load: {e}"),
            None => panic!("README example `{key}: {value}` names a field no shipped recipe or config has"),
        }
    }
}

/// Splits a shell command line into words (double quotes group).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = vec![];
    let mut current = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    words.extend((!current.is_empty()).then_some(current));
    words
}

/// Concrete commands (no `[optional]` or `a|b` synopsis) in the README's code blocks and
/// spans: `btx ...` and `cargo xtask btx|recipe|train ...` parse as `btx` command lines,
/// and the recipes and configs they name exist.
#[test]
fn commands_in_the_readme_parse() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    // Code spans name commands in prose unless they pass flags; code blocks are examples.
    let mut lines: Vec<String> = code_spans(&readme).into_iter().filter(|s| s.contains(" --")).collect();
    let mut in_block = false;
    for l in readme.lines() {
        if l.starts_with("```") {
            in_block = !in_block;
        } else if in_block {
            lines.push(l.split(" #").next().unwrap().to_string());
        }
    }
    let mut checked = 0;
    for line in lines {
        let line = line.trim().trim_start_matches("$ ");
        let words = shell_words(line);
        // A synopsis: optional parts, alternatives, or PLACEHOLDER words (ARGS, C.ron).
        let placeholder = |w: &String| w.split('.').next().is_some_and(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
        let synopsis = line.contains('[') || line.contains('|') || line.contains("...") || words.iter().any(placeholder);
        if synopsis || !(line.starts_with("btx ") || line.starts_with("cargo xtask ")) {
            continue;
        }
        let btx_words: Vec<String> = match words.get(..3).map(|w| [w[0].as_str(), w[1].as_str(), w[2].as_str()]) {
            Some(["cargo", "xtask", "btx"]) => words[3..].to_vec(),
            Some(["cargo", "xtask", "recipe"]) => words[2..].to_vec(),
            Some(["cargo", "xtask", "train"]) => vec!["train".into(), "--config".into(), words[3].clone(), "--out".into(), "runs/x".into()],
            Some(["cargo", "xtask", _]) => {
                // bench and other xtask-only commands: their flags are xtask's; the configs
                // they name must ship.
                for w in words.iter().filter(|w| w.ends_with(".ron")) {
                    assert!(repo_root().join(w).is_file(), "README command `{line}` names {w}, which does not exist");
                }
                continue;
            }
            _ => words[1..].to_vec(),
        };
        if let Err(e) = btx::cli::Cli::try_parse_from(std::iter::once("btx".to_string()).chain(btx_words.clone())) {
            panic!("README command `{line}` does not parse: {e}");
        }
        // Files under runs/ are outputs of earlier commands; the others ship.
        for w in btx_words.iter().filter(|w| w.ends_with(".ron") && !w.starts_with("runs/")) {
            assert!(repo_root().join(w).is_file(), "README command `{line}` names {w}, which does not exist");
        }
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} commands found");
}
