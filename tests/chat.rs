//! Chat templates against transformers: the text and token ids of `apply_chat_template` for
//! the templates of the families the engine imports (Llama 3, 3.1, 3.2, Qwen2.5, Qwen3,
//! Gemma 3, Gemma 2, Mistral), the reply mask against transformers' assistant-token mask
//! (trl's `{% generation %}` copies of the templates), and conversations refused with a
//! reason. Fixtures made by tests/fixtures/chat/make_fixtures.py.

use btx::chat::{ChatTemplate, messages_of, render_for_training, tokens_and_mask, with_raw_offsets};
use serde_json::{Map, Value, json};

use crate::common::repo_root;

fn fixtures() -> Map<String, Value> {
    let path = repo_root().join("tests/fixtures/chat/rendered.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tokenizer() -> tokenizers::Tokenizer {
    tokenizers::Tokenizer::from_file(repo_root().join("tests/fixtures/chat/tokenizer.json")).unwrap()
}

fn template(name: &str, family: &Value) -> ChatTemplate {
    let source = std::fs::read_to_string(repo_root().join(format!("tests/fixtures/chat/templates/{name}.jinja"))).unwrap();
    let mut special = Map::new();
    for token in ["bos_token", "eos_token"] {
        if let Some(t) = family[token].as_str() {
            special.insert(token.into(), json!(t));
        }
    }
    ChatTemplate::new(&source, name, special).unwrap()
}

fn messages(case: &Value) -> Vec<Value> {
    case["messages"].as_array().unwrap().clone()
}

#[test]
fn templates_render_the_text_and_tokens_of_apply_chat_template() {
    let tokenizer = tokenizer();
    let fixtures = fixtures();
    assert_eq!(fixtures.len(), 8);
    for (name, family) in &fixtures {
        let template = template(name, family);
        let variables = family["variables"].as_object().unwrap();
        for case in family["cases"].as_array().unwrap() {
            let prompt = case["add_generation_prompt"].as_bool().unwrap();
            let text = template.render(&messages(case), prompt, variables).unwrap();
            assert_eq!(text, case["text"].as_str().unwrap(), "{name}, conversation {}, generation prompt {prompt}", case["conversation"]);
            let ids: Vec<u64> = tokenizer.encode(text.as_str(), false).unwrap().get_ids().iter().map(|&i| i as u64).collect();
            let want: Vec<u64> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(ids, want, "{name}, conversation {}: token ids", case["conversation"]);
        }
    }
}

#[test]
fn the_reply_mask_is_transformers_assistant_mask() {
    let tokenizer = tokenizer();
    let raw = with_raw_offsets(&tokenizer);
    let mut compared = 0;
    for (name, family) in &fixtures() {
        let template = template(name, family);
        for case in family["cases"].as_array().unwrap().iter().filter(|c| !c["add_generation_prompt"].as_bool().unwrap()) {
            if !family["variables"].as_object().unwrap().is_empty() {
                continue;
            }
            let rendered = render_for_training(&template, &messages(case)).unwrap();
            let (ids, mask) = tokens_and_mask(&raw, &rendered.text, &rendered.replies).unwrap();
            let want_ids: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(ids, want_ids, "{name}: ids through the raw-offset tokenizer");
            let replies = messages(case).iter().filter(|m| m["role"] == "assistant").count();
            assert_eq!(rendered.replies.len(), replies, "{name}");
            let Some(theirs) = case["assistant_masks"].as_array() else { continue };
            let theirs: Vec<u8> = theirs.iter().map(|v| v.as_u64().unwrap() as u8).collect();
            if name.starts_with("qwen") {
                // trl's Qwen2.5 copy opens its generation block before the newline that ends
                // the `<|im_start|>assistant` header, Qwen3's before the empty thinking block
                // the template writes itself: that is all they count beyond the replies.
                let mut extra = Vec::new();
                for (i, (&ours, &their)) in mask.iter().zip(&theirs).enumerate() {
                    assert!(ours <= their, "{name}: token {i} counted by the engine only");
                    if ours < their {
                        extra.push(ids[i]);
                    } else if !extra.is_empty() {
                        let text = tokenizer.decode(&extra, false).unwrap();
                        assert!(["\n", "<think>\n\n</think>\n\n"].contains(&text.as_str()), "{name}: transformers also counts {text:?}");
                        extra.clear();
                    }
                }
            } else {
                assert_eq!(mask, theirs, "{name}, conversation {}", case["conversation"]);
            }
            compared += 1;
        }
    }
    assert!(compared >= 12, "{compared} masks compared");
}

#[test]
fn sharegpt_and_messages_records_give_the_same_conversation() {
    let messages = messages_of(&json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}), None).unwrap();
    let sharegpt = messages_of(&json!({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}), None).unwrap();
    assert_eq!(messages, sharegpt);
    let named = messages_of(&json!({"chat": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}), Some("chat")).unwrap();
    assert_eq!(named, messages);
}

#[test]
fn bad_conversations_and_templates_say_what_is_wrong() {
    let err = |record: Value| messages_of(&record, None).unwrap_err();
    assert!(err(json!({"messages": [{"role": "user", "content": "hi"}]})).contains("no assistant turn"));
    let unknown = err(json!({"messages": [{"role": "narrator", "content": "hi"}, {"role": "assistant", "content": "x"}]}));
    assert!(unknown.contains("message 0") && unknown.contains("unknown role `narrator`"), "{unknown}");
    assert!(err(json!({"text": "plain"})).contains("plain-text record"));
    assert!(err(json!({"conversations": [{"from": "alien", "value": "x"}]})).contains("unknown ShareGPT role `alien`"));
    // A template that raises: its own message, through render.
    let mistral = template("mistral", &json!({"bos_token": "<s>", "eos_token": "</s>"}));
    let system = vec![json!({"role": "system", "content": "be brief"}), json!({"role": "user", "content": "hi"}), json!({"role": "assistant", "content": "yo"})];
    let e = render_for_training(&mistral, &system).err().unwrap().to_string();
    assert!(e.contains("Conversation roles must alternate"), "{e}");
    // A tokenizer with no template beside it, and none given.
    let e = ChatTemplate::for_tokenizer(&repo_root().join("assets/tokenizer.json"), None).err().unwrap().to_string();
    assert!(e.contains("has no chat template") && e.contains("--chat-template"), "{e}");
    // A template that does not parse names itself.
    let e = ChatTemplate::new("{% for m in messages %}", "broken.jinja", Map::new()).err().unwrap().to_string();
    assert!(e.contains("broken.jinja") && e.contains("does not parse"), "{e}");
}
