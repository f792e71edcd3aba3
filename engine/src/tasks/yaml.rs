//! Reading an lm-evaluation-harness task file: YAML, `include:` files merged under the
//! including file's keys (top-level keys only, the including file winning, as lm-eval's
//! `load_yaml` does), and Python hooks (`!function`) refused by key and file: the engine
//! cannot run them, and ignoring one would change what is scored.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

/// The task file's keys after its includes are merged.
pub fn load_task_yaml(path: &Path) -> Result<Map<String, Value>> {
    load_with_includes(path, &mut Vec::new())
}

fn load_with_includes(path: &Path, stack: &mut Vec<PathBuf>) -> Result<Map<String, Value>> {
    let canonical = path.canonicalize().with_context(|| format!("cannot read task file {}", path.display()))?;
    if stack.contains(&canonical) {
        bail!("{}: `include` forms a cycle ({})", path.display(), stack.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" -> "));
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read task file {}", path.display()))?;
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).map_err(|e| match e.location() {
        Some(at) => anyhow::anyhow!("{}: not valid YAML at line {}, column {}: {e}", path.display(), at.line(), at.column()),
        None => anyhow::anyhow!("{}: not valid YAML: {e}", path.display()),
    })?;
    let Value::Object(mut keys) = to_json(yaml, path, "")? else {
        bail!("{}: a task file must be a mapping of keys (task, dataset_path, ...)", path.display());
    };
    let Some(includes) = keys.remove("include") else { return Ok(keys) };
    let includes = match includes {
        Value::String(s) => vec![s],
        Value::Array(items) => items
            .into_iter()
            .map(|v| v.as_str().map(str::to_string).with_context(|| format!("{}: `include` must be a file name or a list of them", path.display())))
            .collect::<Result<_>>()?,
        _ => bail!("{}: `include` must be a file name or a list of them", path.display()),
    };
    stack.push(canonical);
    let mut merged = Map::new();
    for include in includes {
        let included = path.parent().unwrap_or(Path::new(".")).join(&include);
        let mut keys = load_with_includes(&included, stack).with_context(|| format!("included by {}", path.display()))?;
        keys.remove("task_list");
        merged.extend(keys);
    }
    stack.pop();
    merged.extend(keys);
    Ok(merged)
}

/// YAML as JSON values; a tagged value (`!function utils.process_docs`) is refused.
fn to_json(value: serde_yaml_ng::Value, path: &Path, key: &str) -> Result<Value> {
    use serde_yaml_ng::Value as Y;
    Ok(match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().enumerate().map(|(i, v)| to_json(v, path, &format!("{key}[{i}]"))).collect::<Result<_>>()?),
        Y::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let name = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => if b { "True" } else { "False" }.to_string(),
                    other => bail!("{}: key {other:?} under `{key}` is not a string", path.display()),
                };
                let child = if key.is_empty() { name.clone() } else { format!("{key}.{name}") };
                out.insert(name, to_json(v, path, &child)?);
            }
            Value::Object(out)
        }
        Y::Tagged(tagged) => bail!(
            "{}: `{key}` is `{} {}`, a Python hook; the engine cannot run Python, and skipping it would change the scores (rewrite it as a field name or a Jinja template)",
            path.display(),
            tagged.tag,
            match &tagged.value {
                Y::String(s) => s.clone(),
                other => format!("{other:?}"),
            }
        ),
    })
}
