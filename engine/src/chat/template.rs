//! A tokenizer's chat template, rendered as transformers' `apply_chat_template` renders it:
//! Jinja with `trim_blocks` and `lstrip_blocks`, `{% break %}`/`{% continue %}`, Python's
//! string methods, `raise_exception`, `strftime_now` and a `tojson` that writes what Python's
//! `json.dumps(ensure_ascii=False)` writes; the special tokens of tokenizer_config.json
//! (`bos_token`, `eos_token`, ...) are variables beside `messages`, `tools` (none) and
//! `add_generation_prompt`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use minijinja::{Environment, Error as JinjaError, ErrorKind, Value as Jinja};
use serde_json::{Map, Value};

/// Special-token variables transformers passes to a template.
const SPECIAL_TOKENS: [&str; 6] = ["bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token"];

pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from (errors name it).
    pub origin: String,
    /// The template's text.
    pub source: String,
    /// The special tokens of tokenizer_config.json, by variable name.
    pub special_tokens: Map<String, Value>,
    /// What the template writes after an assistant's reply before the next turn (e.g.
    /// Gemma's `<end_of_turn>\n`, Llama 3's `<|eot_id|>`): the end of turn a reply's loss
    /// counts, and where generation stops.
    pub end_of_turn: String,
}

impl ChatTemplate {
    /// The template of the tokenizer at `tokenizer_json`: `explicit` (a .jinja file, or a
    /// tokenizer_config.json) when given, else `chat_template.jinja` beside the tokenizer
    /// (transformers 5 saves it there), else the `chat_template` of tokenizer_config.json.
    pub fn for_tokenizer(tokenizer_json: &Path, explicit: Option<&Path>) -> Result<Self> {
        let config_path = tokenizer_json.with_file_name("tokenizer_config.json");
        let config = read_json_object(&config_path).ok();
        let (source, origin) = match explicit {
            Some(path) if path.extension().is_some_and(|e| e == "json") => {
                let explicit_config = read_json_object(path)?;
                (template_in_config(&explicit_config, path)?.with_context(|| format!("{}: no field `chat_template`", path.display()))?, path.to_path_buf())
            }
            Some(path) => (std::fs::read_to_string(path).with_context(|| format!("cannot read chat template {}", path.display()))?, path.to_path_buf()),
            None => find_beside(tokenizer_json, config.as_ref())?,
        };
        let special_tokens = config.as_ref().map(special_tokens_of).unwrap_or_default();
        Self::new(&source, &origin.display().to_string(), special_tokens)
    }

    /// A template from its text; `special_tokens` are its `bos_token`, `eos_token`, ...
    pub fn new(source: &str, origin: &str, special_tokens: Map<String, Value>) -> Result<Self> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_syntax(minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build().expect("default delimiters"));
        env.set_formatter(python_formatter);
        env.add_function("raise_exception", |message: String| -> Result<Jinja, JinjaError> { Err(JinjaError::new(ErrorKind::InvalidOperation, message)) });
        env.add_function("strftime_now", |format: String| super::strftime::now(&format));
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string()).map_err(|e| anyhow!("chat template {origin} does not parse: {}", describe(&e)))?;
        let mut template = Self { env, origin: origin.to_string(), source: source.to_string(), special_tokens, end_of_turn: String::new() };
        template.end_of_turn = template.probe_end_of_turn()?;
        Ok(template)
    }

    /// The text of `messages` (objects with `role` and `content`), with the opening of the
    /// assistant's next turn after them when `add_generation_prompt`; `variables` are extra
    /// template variables (transformers' keyword arguments, e.g. Llama 3.1's `date_string`).
    pub fn render(&self, messages: &[Value], add_generation_prompt: bool, variables: &Map<String, Value>) -> Result<String> {
        let mut context = self.special_tokens.clone();
        context.extend(variables.clone());
        context.insert("messages".into(), Value::Array(messages.to_vec()));
        context.insert("tools".into(), Value::Null);
        context.insert("documents".into(), Value::Null);
        context.insert("add_generation_prompt".into(), Value::Bool(add_generation_prompt));
        let template = self.env.get_template("chat").expect("added in new");
        template.render(Jinja::from(minijinja::value::Serde(&context))).map_err(|e| anyhow!("chat template {}: {}", self.origin, describe(&e)))
    }

    /// The text between an assistant's reply and what follows it, from a two-turn probe.
    fn probe_end_of_turn(&self) -> Result<String> {
        const REPLY: &str = "\u{E001}reply\u{E001}";
        let probe = [serde_json::json!({"role": "user", "content": "\u{E000}question\u{E000}"}), serde_json::json!({"role": "assistant", "content": REPLY})];
        let text = self.render(&probe, false, &Map::new()).with_context(|| format!("rendering a user turn and an assistant turn with chat template {}", self.origin))?;
        let at = text.find(REPLY).with_context(|| format!("chat template {} does not write an assistant's reply as it is", self.origin))?;
        Ok(text[at + REPLY.len()..].to_string())
    }
}

/// The template beside a tokenizer, and the file it came from.
fn find_beside(tokenizer_json: &Path, config: Option<&Map<String, Value>>) -> Result<(String, PathBuf)> {
    let jinja = tokenizer_json.with_file_name("chat_template.jinja");
    if jinja.is_file() {
        return Ok((std::fs::read_to_string(&jinja).with_context(|| format!("cannot read {}", jinja.display()))?, jinja));
    }
    let config_path = tokenizer_json.with_file_name("tokenizer_config.json");
    if let Some(config) = config
        && let Some(source) = template_in_config(config, &config_path)?
    {
        return Ok((source, config_path));
    }
    bail!(
        "tokenizer {} has no chat template (no chat_template.jinja beside it, and no `chat_template` in {}); give one with --chat-template FILE (a recipe's `chat_template`)",
        tokenizer_json.display(),
        config_path.display()
    )
}

/// tokenizer_config.json's `chat_template`: a string, or a list of named templates (the one
/// named `default`).
fn template_in_config(config: &Map<String, Value>, path: &Path) -> Result<Option<String>> {
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(named)) => {
            let default = named.iter().find(|t| t["name"] == "default").and_then(|t| t["template"].as_str());
            default.map(|s| Some(s.to_string())).with_context(|| format!("{}: field `chat_template` lists no template named `default`", path.display()))
        }
        Some(_) => bail!("{}: field `chat_template` is neither a string nor a list of named templates", path.display()),
    }
}

fn read_json_object(path: &Path) -> Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a JSON object", path.display()))
}

/// The special tokens of a tokenizer_config.json (a token is a string or `{content: ...}`).
pub fn special_tokens_of(config: &Map<String, Value>) -> Map<String, Value> {
    SPECIAL_TOKENS
        .iter()
        .filter_map(|&name| {
            let token = match config.get(name)? {
                Value::String(s) => s.clone(),
                other => other["content"].as_str()?.to_string(),
            };
            Some((name.to_string(), Value::String(token)))
        })
        .collect()
}

/// Prints values as Python's str() does (None, True, False).
fn python_formatter(out: &mut minijinja::Output, state: &mut minijinja::State, value: &Jinja) -> Result<(), JinjaError> {
    match value.as_str() {
        None if value.is_none() => out.write_str("None").map_err(Into::into),
        None if value.kind() == minijinja::value::ValueKind::Bool => out.write_str(if value.is_true() { "True" } else { "False" }).map_err(Into::into),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// transformers' `tojson`: `json.dumps(value, ensure_ascii=False, indent=indent)`, whose
/// separators are `, ` and `: ` (`,` and `: ` with an indent).
fn tojson(value: Jinja, kwargs: minijinja::value::Kwargs) -> Result<Jinja, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value).map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    python_json(&json, indent, 0, &mut out);
    Ok(Jinja::from_safe_string(out))
}

fn python_json(value: &Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    let separator = if indent.is_some() { "," } else { ", " };
    match value {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                out.push_str(if i > 0 { separator } else { "" });
                newline(out, depth + 1);
                python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                out.push_str(if i > 0 { separator } else { "" });
                newline(out, depth + 1);
                out.push_str(&Value::String(key.clone()).to_string());
                out.push_str(": ");
                python_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A Jinja error with the template's own message first (`raise_exception`'s text).
fn describe(e: &JinjaError) -> String {
    let mut text = e.detail().map(str::to_string).unwrap_or_else(|| e.to_string());
    if let Some(line) = e.line() {
        text.push_str(&format!(" (template line {line})"));
    }
    text
}
