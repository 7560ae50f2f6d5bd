//! What goes on the wire: a [`GenerateRequest`] as a chat-completions JSON body, built the way
//! the reference harness builds it.
//!
//! - A message made of exactly one text part is sent with a plain string `content`; any other
//!   message is sent as a list of parts, in the given order.
//! - An image is sent as a `data:` URL of the file's bytes as they are (no re-encoding), standard
//!   base64 with padding, its MIME type guessed from the first base64 character
//!   ([`mime_from_base64`]).
//! - `max_new_tokens`, `temperature` and `top_p` become `max_tokens`, `temperature` and `top_p`,
//!   each only when set; `response_format` is passed through as is.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};
use vlsbench_plugin_api::{BackendError, ChatMessage, ContentPart, GenerateRequest, GenerationSettings, Role};

/// The MIME type the reference harness guesses from the first character of an image's base64
/// text: `/` JPEG, `i` PNG, `R` GIF, `U` WebP, `Q` BMP; anything else, or nothing, JPEG.
pub fn mime_from_base64(b64: &str) -> &'static str {
    match b64.as_bytes().first() {
        Some(b'/') => "image/jpeg",
        Some(b'i') => "image/png",
        Some(b'R') => "image/gif",
        Some(b'U') => "image/webp",
        Some(b'Q') => "image/bmp",
        _ => "image/jpeg",
    }
}

/// A `data:` URL of `bytes`, as the reference builds it.
pub fn image_data_url(bytes: &[u8]) -> String {
    let b64 = STANDARD.encode(bytes);
    format!("data:{};base64,{b64}", mime_from_base64(&b64))
}

/// The OpenAI name of a role.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

/// One content part as JSON, reading an image's file.
fn part_json(part: &ContentPart) -> Result<Value, BackendError> {
    Ok(match part {
        ContentPart::Text { text } => json!({"type": "text", "text": text}),
        ContentPart::Image { path } => {
            json!({"type": "image_url", "image_url": {"url": image_data_url(&read_image(path)?)}})
        }
    })
}

fn read_image(path: &Path) -> Result<Vec<u8>, BackendError> {
    std::fs::read(path).map_err(|e| BackendError::bad_request(format!("cannot read image `{}`: {e}", path.display())))
}

/// One chat message as JSON: a plain string for a single text part, otherwise a list of parts.
pub fn message_json(message: &ChatMessage) -> Result<Value, BackendError> {
    let content = match message.content.as_slice() {
        [ContentPart::Text { text }] => Value::String(text.clone()),
        parts => Value::Array(parts.iter().map(part_json).collect::<Result<_, _>>()?),
    };
    Ok(json!({"role": role_name(message.role), "content": content}))
}

/// Writes the settings that are set into `body`, under their OpenAI names.
pub fn put_settings(body: &mut Map<String, Value>, settings: &GenerationSettings) {
    if let Some(n) = settings.max_new_tokens {
        body.insert("max_tokens".into(), json!(n));
    }
    if let Some(t) = settings.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = settings.top_p {
        body.insert("top_p".into(), json!(p));
    }
}

/// The whole chat-completions body for `request`, addressed to `model`.
pub fn request_body(model: &str, request: &GenerateRequest) -> Result<Value, BackendError> {
    let messages = request.messages.iter().map(message_json).collect::<Result<Vec<_>, _>>()?;
    let mut body = Map::new();
    body.insert("model".into(), Value::String(model.to_string()));
    body.insert("messages".into(), Value::Array(messages));
    put_settings(&mut body, &request.settings);
    if let Some(format) = &request.response_format {
        body.insert("response_format".into(), format.clone());
    }
    Ok(Value::Object(body))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::PathBuf;

    use vlsbench_plugin_api::ErrorKind;

    use super::*;

    /// A file in a fresh temporary folder, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, bytes: &[u8]) -> Self {
            let dir = std::env::temp_dir().join(format!("vlsbench-openai-wire-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";
    const JPEG_MAGIC: &[u8] = b"\xff\xd8\xff\xe0";

    #[test]
    fn the_mime_type_is_guessed_from_the_first_base64_character() {
        assert_eq!(mime_from_base64("/9j/4AAQ"), "image/jpeg");
        assert_eq!(mime_from_base64("iVBORw0KGgo="), "image/png");
        assert_eq!(mime_from_base64("R0lGODlh"), "image/gif");
        assert_eq!(mime_from_base64("UklGRg=="), "image/webp");
        assert_eq!(mime_from_base64("Qk0="), "image/bmp");
    }

    #[test]
    fn an_unknown_or_empty_base64_text_is_taken_for_jpeg() {
        assert_eq!(mime_from_base64("AAAA"), "image/jpeg");
        assert_eq!(mime_from_base64(""), "image/jpeg");
    }

    #[test]
    fn real_file_signatures_give_the_expected_mime_types() {
        assert!(image_data_url(PNG_MAGIC).starts_with("data:image/png;base64,iVBOR"));
        assert!(image_data_url(JPEG_MAGIC).starts_with("data:image/jpeg;base64,/9j/"));
        assert!(image_data_url(b"GIF89a").starts_with("data:image/gif;base64,R0lG"));
        assert!(image_data_url(b"RIFF\0\0\0\0WEBP").starts_with("data:image/webp;base64,UklG"));
        assert!(image_data_url(b"BM").starts_with("data:image/bmp;base64,Qk0"));
    }

    #[test]
    fn the_image_bytes_are_sent_as_they_are_in_padded_standard_base64() {
        assert_eq!(image_data_url(&[0xfb, 0xff]), "data:image/jpeg;base64,+/8=");
    }

    #[test]
    fn a_single_text_part_is_sent_as_a_plain_string() {
        let m = ChatMessage::text(Role::System, "You are a helpful assistant.");
        assert_eq!(message_json(&m).unwrap(), json!({"role": "system", "content": "You are a helpful assistant."}));
        let m = ChatMessage::text(Role::Assistant, "ok");
        assert_eq!(message_json(&m).unwrap(), json!({"role": "assistant", "content": "ok"}));
    }

    #[test]
    fn text_then_image_is_sent_as_a_list_in_that_order() {
        let img = TempFile::new("a.png", PNG_MAGIC);
        let m = ChatMessage::new(Role::User, vec![ContentPart::text("What is this?"), ContentPart::image(&img.0)]);
        assert_eq!(
            message_json(&m).unwrap(),
            json!({"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": image_data_url(PNG_MAGIC)}},
            ]})
        );
    }

    #[test]
    fn image_then_text_is_sent_as_a_list_in_that_order() {
        let img = TempFile::new("b.jpg", JPEG_MAGIC);
        let m = ChatMessage::new(Role::User, vec![ContentPart::image(&img.0), ContentPart::text("Describe it.")]);
        let v = message_json(&m).unwrap();
        assert_eq!(v["content"][0]["type"], "image_url");
        assert_eq!(v["content"][0]["image_url"]["url"], image_data_url(JPEG_MAGIC));
        assert_eq!(v["content"][1], json!({"type": "text", "text": "Describe it."}));
    }

    #[test]
    fn a_lone_image_is_still_sent_as_a_list() {
        let img = TempFile::new("c.png", PNG_MAGIC);
        let m = ChatMessage::new(Role::User, vec![ContentPart::image(&img.0)]);
        assert!(message_json(&m).unwrap()["content"].is_array());
    }

    #[test]
    fn an_unreadable_image_is_a_bad_request_that_names_the_path() {
        let m = ChatMessage::new(Role::User, vec![ContentPart::image("/no/such/dir/img-404.png")]);
        let e = message_json(&m).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("/no/such/dir/img-404.png"), "{}", e.message);
    }

    #[test]
    fn settings_are_sent_under_their_openai_names_and_zero_stays_a_float() {
        let mut body = Map::new();
        put_settings(&mut body, &GenerationSettings::reference());
        assert_eq!(Value::Object(body.clone()), json!({"max_tokens": 128, "temperature": 0.0, "top_p": 1.0}));
        let text = serde_json::to_string(&Value::Object(body)).unwrap();
        assert!(text.contains("\"temperature\":0.0"), "{text}");
    }

    #[test]
    fn unset_settings_are_left_out() {
        let mut body = Map::new();
        put_settings(&mut body, &GenerationSettings { temperature: Some(0.7), ..Default::default() });
        assert_eq!(Value::Object(body), json!({"temperature": 0.7}));
    }

    #[test]
    fn the_request_body_carries_model_messages_settings_and_response_format() {
        let format = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {}}});
        let request = GenerateRequest {
            id: "17/judge".into(),
            messages: vec![ChatMessage::text(Role::System, "sys"), ChatMessage::text(Role::User, "hi")],
            settings: GenerationSettings { max_new_tokens: Some(64), ..Default::default() },
            response_format: Some(format.clone()),
        };
        assert_eq!(
            request_body("gpt-4o", &request).unwrap(),
            json!({
                "model": "gpt-4o",
                "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}],
                "max_tokens": 64,
                "response_format": format,
            })
        );
    }

    #[test]
    fn a_request_without_response_format_sends_none() {
        let request = GenerateRequest {
            id: "1".into(),
            messages: vec![ChatMessage::text(Role::User, "hi")],
            settings: GenerationSettings::default(),
            response_format: None,
        };
        let body = request_body("m", &request).unwrap();
        assert!(body.get("response_format").is_none());
        assert!(body.get("max_tokens").is_none());
    }
}
