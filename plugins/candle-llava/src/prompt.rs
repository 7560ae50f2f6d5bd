//! The prompt as transformers builds it for `LlavaProcessor`: the checkpoint's chat template
//! rendered like `apply_chat_template` (jinja2 with `trim_blocks`, `lstrip_blocks`, loop
//! controls, Python string methods, `raise_exception`, and the transformers-only
//! `{% generation %}` block, which renders its body unchanged), then each `<image>` expanded to
//! the processor's number of image tokens and tokenized with `tokenizer.json` (BOS from its
//! post-processor).

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use vlsbench_plugin_api::{ChatMessage, ContentPart, Role};

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error(
        "{0}: no chat template (chat_template.jinja, chat_template.json, processor_config.json or tokenizer_config.json)"
    )]
    NoTemplate(PathBuf),
    #[error("chat template: {0}")]
    Template(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

fn read(path: &Path) -> Result<String, PromptError> {
    std::fs::read_to_string(path).map_err(|e| PromptError::Read { path: path.to_owned(), message: e.to_string() })
}

fn read_json(path: &Path) -> Result<Value, PromptError> {
    serde_json::from_str(&read(path)?).map_err(|e| PromptError::Read { path: path.to_owned(), message: e.to_string() })
}

/// What Python's text mode makes of a file (transformers opens `chat_template.jinja` with
/// `open(path, encoding="utf-8")`): `\r\n` and lone `\r` read as `\n`. A checkpoint that went
/// through a Windows checkout has CRLF inside the template's string literals; transformers never
/// sees them.
pub fn universal_newlines(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\r', "\n")
}

/// A template field: a string, or a list of named templates (the `default` one is taken).
fn template_field(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(a) => a
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

/// The chat template's source, in transformers' order of precedence.
pub fn load_chat_template(dir: &Path) -> Result<String, PromptError> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return Ok(universal_newlines(&read(&jinja)?));
    }
    for (file, key) in [
        ("chat_template.json", "chat_template"),
        ("processor_config.json", "chat_template"),
        ("tokenizer_config.json", "chat_template"),
    ] {
        let p = dir.join(file);
        if p.is_file()
            && let Some(t) = read_json(&p)?.get(key).and_then(template_field)
        {
            return Ok(t);
        }
    }
    Err(PromptError::NoTemplate(dir.to_owned()))
}

/// Rewrites transformers' `{% generation %}` / `{% endgeneration %}` tags (its
/// `AssistantTracker` extension, which only records offsets) into an always-true block with the
/// same whitespace control, so trim_blocks and `-` modifiers act exactly as they would.
pub fn rewrite_generation_tags(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("%}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = &after[..end];
        let (lead, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, trail) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[body.len() - 1..]),
            None => (body, ""),
        };
        match body.trim() {
            "generation" => out.push_str(&format!("{{%{lead} if true {trail}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{lead} endif {trail}%}}")),
            _ => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// The special tokens transformers passes to every template (`bos_token`, `eos_token`, ...).
fn special_tokens(dir: &Path) -> Result<serde_json::Map<String, Value>, PromptError> {
    let mut out = serde_json::Map::new();
    for file in ["special_tokens_map.json", "tokenizer_config.json"] {
        let p = dir.join(file);
        if !p.is_file() {
            continue;
        }
        let v = read_json(&p)?;
        for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            let s = match v.get(key) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_owned),
                _ => None,
            };
            if let Some(s) = s {
                out.insert(key.to_owned(), Value::String(s));
            }
        }
    }
    Ok(out)
}

/// Chat messages as transformers' templates see them: `{"role", "content": [{"type": "text",
/// "text"}, {"type": "image"}]}`.
pub fn messages_json(messages: &[ChatMessage]) -> Value {
    Value::Array(
        messages
            .iter()
            .map(|m| {
                let role = match m.role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                };
                let content: Vec<Value> = m
                    .content
                    .iter()
                    .map(|p| match p {
                        ContentPart::Text { text } => json!({"type": "text", "text": text}),
                        ContentPart::Image { .. } => json!({"type": "image"}),
                    })
                    .collect();
                json!({"role": role, "content": content})
            })
            .collect(),
    )
}

/// A compiled chat template plus the variables transformers passes to it.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    specials: serde_json::Map<String, Value>,
}

impl ChatTemplate {
    pub fn from_dir(dir: &Path) -> Result<Self, PromptError> {
        Self::new(&load_chat_template(dir)?, special_tokens(dir)?)
    }

    pub fn new(source: &str, specials: serde_json::Map<String, Value>) -> Result<Self, PromptError> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", rewrite_generation_tags(source))
            .map_err(|e| PromptError::Template(e.to_string()))?;
        Ok(Self { env, specials })
    }

    /// `apply_chat_template(messages, add_generation_prompt=True, tokenize=False)`.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, PromptError> {
        let mut ctx = self.specials.clone();
        ctx.insert("messages".into(), messages_json(messages));
        ctx.insert("add_generation_prompt".into(), Value::Bool(true));
        let t = self.env.get_template("chat").map_err(|e| PromptError::Template(e.to_string()))?;
        t.render(Value::Object(ctx)).map_err(|e| PromptError::Template(e.to_string()))
    }
}

/// `tokenizer.json` plus what the processor needs around it.
pub struct PromptTokenizer {
    pub tokenizer: tokenizers::Tokenizer,
}

impl PromptTokenizer {
    pub fn from_dir(dir: &Path) -> Result<Self, PromptError> {
        let p = dir.join("tokenizer.json");
        if !p.is_file() {
            return Err(PromptError::Read { path: p, message: "missing (a tokenizer.json is needed)".into() });
        }
        let tokenizer = tokenizers::Tokenizer::from_file(&p)
            .map_err(|e| PromptError::Read { path: p.clone(), message: e.to_string() })?;
        Ok(Self { tokenizer })
    }

    /// `LlavaProcessor.__call__`: each `image_token` in `text` becomes `n_image_tokens` copies,
    /// then the text is tokenized with special tokens added.
    pub fn encode(&self, text: &str, image_token: &str, n_image_tokens: usize) -> Result<Vec<u32>, PromptError> {
        let expanded = text.replace(image_token, &image_token.repeat(n_image_tokens));
        let enc = self.tokenizer.encode(expanded, true).map_err(|e| PromptError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// `tokenizer.decode(ids, skip_special_tokens=True)`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, PromptError> {
        self.tokenizer.decode(ids, true).map_err(|e| PromptError::Tokenizer(e.to_string()))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(prompt: &str) -> Vec<ChatMessage> {
        vec![ChatMessage::new(Role::User, vec![ContentPart::text(prompt), ContentPart::image("x.png")])]
    }

    fn check(checkpoint: &str, golden: &str) {
        let fx = crate::test_util::fixtures();
        let dir = fx.join("checkpoints").join(checkpoint);
        let g: Value =
            serde_json::from_str(&std::fs::read_to_string(fx.join("golden").join(golden).join("golden.json")).unwrap())
                .unwrap();
        let tmpl = ChatTemplate::from_dir(&dir).unwrap();
        let tok = PromptTokenizer::from_dir(&dir).unwrap();
        let proc = crate::config::ProcessorConfig::from_dir(&dir).unwrap();
        let n = proc.num_image_tokens(proc.image.crop_size.0, proc.image.crop_size.1).unwrap();
        for case in g["cases"].as_array().unwrap() {
            let prompt = case["prompt"].as_str().unwrap();
            let rendered = tmpl.render(&user(prompt)).unwrap();
            assert_eq!(rendered, case["rendered_prompt"].as_str().unwrap(), "{checkpoint}: {prompt}");
            let ids = tok.encode(&rendered, &proc.image_token, n).unwrap();
            let want: Vec<u32> =
                case["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            assert_eq!(ids, want, "{checkpoint}: {prompt}");
            let toks: Vec<u32> =
                case["greedy_tokens"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            assert_eq!(tok.decode(&toks).unwrap(), case["decoded"].as_str().unwrap(), "{checkpoint}: decode");
        }
    }

    #[test]
    fn llava_hf_prompts_and_ids_match_goldens() {
        check("llava_hf", "llava_hf");
    }

    #[test]
    fn llava_hf_old_layout_prompts_and_ids_match_goldens() {
        check("llava_hf_old_layout", "llava_hf_old_layout");
    }

    #[test]
    fn generation_tags_become_plain_blocks() {
        assert_eq!(
            rewrite_generation_tags("a{% generation %}b{%- endgeneration -%}c{{ x }}{% if y %}"),
            "a{% if true %}b{%- endif -%}c{{ x }}{% if y %}"
        );
    }

    #[test]
    fn real_llava_1_5_templates_render_image_then_text() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/checkpoints/llava-hf__llava-1.5-7b-hf");
        if !dir.join("chat_template.json").is_file() {
            println!("SKIPPED: {} absent (the real checkpoint's config files)", dir.display());
            return;
        }
        // The folder holds both files; the .jinja one (read first, like transformers) has CRLF line
        // ends from the checkout it was copied from, which Python's text mode reads as LF.
        let t = ChatTemplate::from_dir(&dir).unwrap();
        assert_eq!(t.render(&user("Hi?")).unwrap(), "USER: <image>\nHi? ASSISTANT:");
        let json = read_json(&dir.join("chat_template.json")).unwrap();
        let src = json.get("chat_template").and_then(template_field).unwrap();
        let t = ChatTemplate::new(&src, special_tokens(&dir).unwrap()).unwrap();
        assert_eq!(t.render(&user("Hi?")).unwrap(), "USER: <image>\nHi? ASSISTANT:");
    }

    #[test]
    fn template_files_read_with_universal_newlines() {
        assert_eq!(universal_newlines("a\r\nb\rc\nd"), "a\nb\nc\nd");
    }
}
