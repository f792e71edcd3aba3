//! `doc_to_text`, `doc_to_target`, `doc_to_choice` and `description` as lm-evaluation-harness
//! resolves them: a column of the evaluated split is read as it is; anything else is a Jinja
//! template (strict about undefined names, the trailing newline kept, Python's string methods
//! and `regex_replace`), whose output may then be read as a Python literal (a digit string as
//! an index, `[...]` as a list), as lm-eval does with `ast.literal_eval`.

use anyhow::{Result, anyhow, bail};
use minijinja::{Environment, UndefinedBehavior, Value as Jinja};
use serde_json::Value;

use super::config::DocField;
use super::dataset::Doc;

pub struct Templates {
    env: Environment<'static>,
    /// The evaluated split's columns: a `doc_to_*` string naming one is a field.
    columns: Vec<String>,
}

/// What `doc_to_target` gives.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Index(i64),
    Text(String),
    List(Vec<Value>),
}

impl Templates {
    pub fn new(columns: Vec<String>) -> Self {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_syntax(minijinja::syntax::SyntaxConfig::builder().keep_trailing_newline(true).build().expect("default delimiters"));
        // Values print as Python's str() prints them.
        env.set_formatter(|out, state, value| match value.as_str() {
            None if value.is_none() => out.write_str("None").map_err(Into::into),
            None if value.kind() == minijinja::value::ValueKind::Bool => out.write_str(if value.is_true() { "True" } else { "False" }).map_err(Into::into),
            _ => minijinja::escape_formatter(out, state, value),
        });
        env.add_filter("regex_replace", |s: String, pattern: String, replacement: String| -> Result<String, minijinja::Error> {
            let re = regex::Regex::new(&pattern).map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))?;
            Ok(re.replace_all(&s, python_replacement(&replacement)).into_owned())
        });
        Self { env, columns }
    }

    /// Renders `template` with the document's fields as variables.
    pub fn render(&self, template: &str, doc: &Doc) -> Result<String> {
        let compiled = self.env.template_from_str(template).map_err(|e| anyhow!("template {template:?} does not parse: {}", first_line(&e)))?;
        compiled.render(Jinja::from(minijinja::value::Serde(doc))).map_err(|e| anyhow!("template {template:?}: {}", first_line(&e)))
    }

    fn field<'d>(&self, name: &str, doc: &'d Doc) -> Option<&'d Value> {
        self.columns.iter().any(|c| c == name).then(|| doc.get(name)).flatten()
    }

    /// lm-eval's `resolve_field` (the description): a field, or a rendered template.
    pub fn text(&self, field: &str, doc: &Doc) -> Result<String> {
        match self.field(field, doc) {
            Some(value) => Ok(python_str(value)),
            None => self.render(field, doc),
        }
    }

    pub fn doc_to_text(&self, field: &DocField, doc: &Doc) -> Result<String> {
        match field {
            DocField::Text(s) => self.text(s, doc),
            DocField::Index(i) => Ok(i.to_string()),
            DocField::List(_) => bail!("`doc_to_text` cannot be a list"),
        }
    }

    pub fn doc_to_target(&self, field: &DocField, doc: &Doc, has_choices: bool) -> Result<Target> {
        match field {
            DocField::Index(i) => Ok(Target::Index(*i)),
            DocField::List(items) => Ok(Target::List(items.clone())),
            DocField::Text(s) => {
                if let Some(value) = self.field(s, doc) {
                    return Ok(match value {
                        Value::Number(n) if n.is_i64() => Target::Index(n.as_i64().unwrap()),
                        Value::Array(items) => Target::List(items.clone()),
                        other => Target::Text(python_str(other)),
                    });
                }
                let rendered = self.render(s, doc)?;
                if has_choices && is_python_digit_string(&rendered) {
                    return Ok(Target::Index(rendered.parse().map_err(|_| anyhow!("target {rendered:?} is not a Python integer literal"))?));
                }
                if rendered.len() >= 2
                    && rendered.starts_with('[')
                    && rendered.ends_with(']')
                    && let Ok(Value::Array(items)) = parse_python_literal(&rendered)
                {
                    return Ok(Target::List(items));
                }
                Ok(Target::Text(rendered))
            }
        }
    }

    pub fn doc_to_choice(&self, field: &DocField, doc: &Doc) -> Result<Vec<String>> {
        let value = match field {
            DocField::List(items) => Value::Array(items.clone()),
            DocField::Index(i) => bail!("`doc_to_choice` cannot be an integer ({i})"),
            DocField::Text(s) => match self.field(s, doc) {
                Some(v) => v.clone(),
                None => {
                    let rendered = self.render(s, doc)?;
                    parse_python_literal(&rendered).map_err(|e| anyhow!("`doc_to_choice` rendered {rendered:?}, which is not a Python list: {e}"))?
                }
            },
        };
        match value {
            Value::Array(items) => Ok(items.iter().map(python_str).collect()),
            Value::Object(map) => Ok(map.values().map(python_str).collect()),
            other => bail!("`doc_to_choice` gave {other}, not a list of choices"),
        }
    }
}

fn first_line(e: &minijinja::Error) -> String {
    let mut text = e.kind().to_string();
    if let Some(detail) = e.detail() {
        text = format!("{text}: {detail}");
    }
    text
}

/// Python's `re.sub` replacement (`\1`, `\g<name>`) in the regex crate's syntax (`${1}`).
fn python_replacement(replacement: &str) -> String {
    let mut out = String::new();
    let mut chars = replacement.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek().copied() {
                Some(d) if d.is_ascii_digit() => {
                    let mut group = String::new();
                    while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                        group.push(d);
                        chars.next();
                    }
                    out.push_str(&format!("${{{group}}}"));
                }
                Some('g') => {
                    chars.next();
                    let name: String = chars.by_ref().skip_while(|&c| c == '<').take_while(|&c| c != '>').collect();
                    out.push_str(&format!("${{{name}}}"));
                }
                Some('n') => {
                    chars.next();
                    out.push('\n');
                }
                Some('t') => {
                    chars.next();
                    out.push('\t');
                }
                Some('\\') => {
                    chars.next();
                    out.push('\\');
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

/// Python's `str.isdigit` for the strings it matters for (non-empty, every character a digit).
fn is_python_digit_string(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_digit())
}

/// Python's `str(value)` for a JSON value (what a template or a field prints).
pub fn python_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "None".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::Number(n) => python_number(n),
        Value::Array(items) => format!("[{}]", items.iter().map(python_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => format!("{{{}}}", map.iter().map(|(k, v)| format!("{}: {}", python_repr(&Value::String(k.clone())), python_repr(v))).collect::<Vec<_>>().join(", ")),
    }
}

fn python_number(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    if f.fract() == 0.0 && f.abs() < 1e16 { format!("{f:.1}") } else { format!("{f}") }
}

/// Python's `repr` of a JSON value.
fn python_repr(value: &Value) -> String {
    match value {
        Value::String(s) => {
            let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
            let mut out = String::from(quote);
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    '\t' => out.push_str("\\t"),
                    c if c == quote => {
                        out.push('\\');
                        out.push(c);
                    }
                    c => out.push(c),
                }
            }
            out.push(quote);
            out
        }
        other => python_str(other),
    }
}

/// `ast.literal_eval` for the literals a template prints: strings, numbers, booleans, None,
/// lists and tuples (as lists), dicts.
pub fn parse_python_literal(text: &str) -> Result<Value> {
    let chars: Vec<char> = text.chars().collect();
    let mut at = 0;
    let value = literal(&chars, &mut at)?;
    skip_space(&chars, &mut at);
    if at != chars.len() {
        bail!("unexpected {:?} at character {at}", chars[at]);
    }
    Ok(value)
}

fn skip_space(chars: &[char], at: &mut usize) {
    while *at < chars.len() && chars[*at].is_whitespace() {
        *at += 1;
    }
}

fn literal(chars: &[char], at: &mut usize) -> Result<Value> {
    skip_space(chars, at);
    let Some(&c) = chars.get(*at) else { bail!("unexpected end") };
    match c {
        '[' | '(' => {
            let close = if c == '[' { ']' } else { ')' };
            *at += 1;
            let mut items = Vec::new();
            loop {
                skip_space(chars, at);
                if chars.get(*at) == Some(&close) {
                    *at += 1;
                    return Ok(Value::Array(items));
                }
                items.push(literal(chars, at)?);
                skip_space(chars, at);
                match chars.get(*at) {
                    Some(',') => *at += 1,
                    Some(c) if *c == close => {}
                    other => bail!("expected `,` or `{close}`, found {other:?}"),
                }
            }
        }
        '{' => {
            *at += 1;
            let mut map = serde_json::Map::new();
            loop {
                skip_space(chars, at);
                if chars.get(*at) == Some(&'}') {
                    *at += 1;
                    return Ok(Value::Object(map));
                }
                let key = python_str(&literal(chars, at)?);
                skip_space(chars, at);
                if chars.get(*at) != Some(&':') {
                    bail!("expected `:` in a dict");
                }
                *at += 1;
                map.insert(key, literal(chars, at)?);
                skip_space(chars, at);
                if chars.get(*at) == Some(&',') {
                    *at += 1;
                }
            }
        }
        '\'' | '"' => quoted(chars, at, c),
        _ => word(chars, at),
    }
}

/// A quoted string, `at` on its opening quote `quote`.
fn quoted(chars: &[char], at: &mut usize, quote: char) -> Result<Value> {
    *at += 1;
    let mut s = String::new();
    loop {
        let Some(&d) = chars.get(*at) else { bail!("unterminated string") };
        *at += 1;
        match d {
            '\\' => {
                let Some(&e) = chars.get(*at) else { bail!("unterminated string") };
                *at += 1;
                s.push(match e {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    '0' => '\0',
                    other => other,
                });
            }
            d if d == quote => break,
            d => s.push(d),
        }
    }
    Ok(Value::String(s))
}

/// `True`, `False`, `None` or a number.
fn word(chars: &[char], at: &mut usize) -> Result<Value> {
    let start = *at;
    while *at < chars.len() && !matches!(chars[*at], ',' | ']' | ')' | '}' | ':') && !chars[*at].is_whitespace() {
        *at += 1;
    }
    let word: String = chars[start..*at].iter().collect();
    match word.as_str() {
        "True" => Ok(Value::Bool(true)),
        "False" => Ok(Value::Bool(false)),
        "None" => Ok(Value::Null),
        w => {
            if let Ok(i) = w.parse::<i64>()
                && !(w.len() > 1 && w.starts_with('0'))
            {
                Ok(Value::from(i))
            } else if let Ok(f) = w.parse::<f64>() {
                Ok(Value::from(f))
            } else {
                bail!("{w:?} is not a Python literal")
            }
        }
    }
}
