//! Conversations as data files hold them: `messages` (OpenAI's and transformers' shape:
//! objects with `role` and `content`) or ShareGPT's `conversations` (`from` and `value`),
//! turned into the messages a chat template reads.

use serde_json::{Value, json};

/// The roles a conversation may use, and ShareGPT's names for them.
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];
const SHAREGPT_ROLES: [(&str, &str); 7] =
    [("system", "system"), ("human", "user"), ("user", "user"), ("gpt", "assistant"), ("assistant", "assistant"), ("model", "assistant"), ("tool", "tool")];

/// The messages of one record: its `field` when given, else `messages`, else
/// `conversations`. The error says what is wrong, for the caller to place (file and line).
pub fn messages_of(record: &Value, field: Option<&str>) -> Result<Vec<Value>, String> {
    let Some(object) = record.as_object() else { return Err("not a JSON object".into()) };
    let name = match field {
        Some(f) => f,
        None if object.contains_key("messages") => "messages",
        None if object.contains_key("conversations") => "conversations",
        None => {
            let keys: Vec<String> = object.keys().map(|k| format!("`{k}`")).collect();
            let hint = if object.contains_key("text") { " (a plain-text record: prepare it without --chat)" } else { "" };
            return Err(format!("no field `messages` or `conversations`; the record has fields {}{hint}", keys.join(", ")));
        }
    };
    let Some(turns) = object.get(name) else { return Err(format!("no field `{name}`")) };
    let Some(turns) = turns.as_array() else { return Err(format!("field `{name}` is not a list of messages")) };
    let messages = turns.iter().enumerate().map(|(i, turn)| message(turn).map_err(|e| format!("field `{name}`, message {i}: {e}"))).collect::<Result<Vec<_>, _>>()?;
    if !messages.iter().any(|m| m["role"] == "assistant") {
        return Err(format!("field `{name}`: the conversation has no assistant turn, so nothing to learn from"));
    }
    Ok(messages)
}

/// One message as the template reads it: `role` and `content` (the other keys kept).
fn message(turn: &Value) -> Result<Value, String> {
    let Some(object) = turn.as_object() else { return Err("not a JSON object".into()) };
    if let Some(from) = object.get("from") {
        let from = from.as_str().ok_or("`from` is not a string")?;
        let role = SHAREGPT_ROLES.iter().find(|(name, _)| *name == from).map(|(_, role)| *role);
        let role = role.ok_or_else(|| format!("unknown ShareGPT role `{from}` (expected one of {})", SHAREGPT_ROLES.map(|(n, _)| n).join(", ")))?;
        let value = object.get("value").and_then(Value::as_str).ok_or("no string `value`")?;
        return Ok(json!({"role": role, "content": value}));
    }
    let role = object.get("role").and_then(Value::as_str).ok_or("no string `role` (or ShareGPT's `from`)")?;
    if !ROLES.contains(&role) {
        return Err(format!("unknown role `{role}` (expected one of {})", ROLES.join(", ")));
    }
    match object.get("content") {
        Some(Value::String(_)) | Some(Value::Array(_)) => Ok(turn.clone()),
        Some(Value::Null) | None if role == "assistant" && object.contains_key("tool_calls") => Ok(turn.clone()),
        _ => Err("no `content` (a string, or a list of parts)".into()),
    }
}

/// A message's text: its string content, or its text parts joined.
pub fn text_of(message: &Value) -> String {
    match &message["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    }
}
