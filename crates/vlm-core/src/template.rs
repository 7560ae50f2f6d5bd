//! The checkpoint's chat template rendered like transformers' `apply_chat_template(messages,
//! add_generation_prompt=True, tokenize=False)`: jinja2 with `trim_blocks`, `lstrip_blocks`, loop
//! controls, `namespace()`, Python string methods, `raise_exception`, `strftime_now`, the
//! special tokens as variables, and the transformers-only `{% generation %}` block, which renders
//! its body unchanged. The template comes from the files transformers reads, in its order.

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
    #[error("{0}")]
    ImageTokens(String),
}

pub(crate) fn read(path: &Path) -> Result<String, PromptError> {
    crate::fsread::read_small_text(path)
        .map_err(|e| PromptError::Read { path: path.to_owned(), message: e.to_string() })
}

pub(crate) fn read_json(path: &Path) -> Result<Value, PromptError> {
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
        // transformers' `strftime_now(format)`: the current local date, for templates that print it.
        env.add_function("strftime_now", |format: String| -> Result<String, minijinja::Error> {
            Ok(strftime_now(&format))
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

/// `datetime.now().strftime(format)` for the directives chat templates use (`%d`, `%b`, `%B`,
/// `%Y`, `%m`, `%y`, `%%`), in UTC: a model's answer must not depend on the machine's time zone.
pub fn strftime_now(format: &str) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    strftime_days(format, (secs / 86_400) as i64)
}

/// [`strftime_now`] for a day counted from 1970-01-01.
pub fn strftime_days(format: &str, days: i64) -> String {
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out += &format!("{day:02}"),
            Some('b') => out += &name[..3],
            Some('B') => out += name,
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year % 100),
            Some('m') => out += &format!("{month:02}"),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(prompt: &str) -> Vec<ChatMessage> {
        vec![ChatMessage::new(Role::User, vec![ContentPart::text(prompt), ContentPart::image("x.png")])]
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
    fn strftime_prints_the_date_as_python_does() {
        // 2024-07-26 is day 19_930.
        assert_eq!(strftime_days("%d %b %Y", 19_930), "26 Jul 2024");
        assert_eq!(strftime_days("%B %m/%y %%", 0), "January 01/70 %");
    }

    #[test]
    fn namespace_counters_work_as_in_jinja2() {
        let t = ChatTemplate::new(
            "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}",
            serde_json::Map::new(),
        )
        .unwrap();
        assert_eq!(t.render(&user("a")).unwrap(), "1");
    }

    #[test]
    fn template_files_read_with_universal_newlines() {
        assert_eq!(universal_newlines("a\r\nb\rc\nd"), "a\nb\nc\nd");
    }
}
