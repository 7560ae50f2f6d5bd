//! What comes back: a server's reply read as a [`Generation`] or a typed [`BackendError`].
//!
//! Failures are never turned into answer text. The mapping:
//!
//! | reply                                                     | result                  |
//! |-----------------------------------------------------------|-------------------------|
//! | 429                                                       | `RateLimited` + Retry-After |
//! | 503                                                       | `ServerError` + Retry-After |
//! | other 5xx                                                 | `ServerError`           |
//! | 401, 403                                                  | `BadConfig` (the server's text is not echoed: it may quote the key) |
//! | 400 whose error code/type names `content_filter` or `content_policy_violation` | `ContentFiltered` |
//! | other 4xx                                                 | `BadRequest` + the server's message |
//! | 200 that is not JSON, or without `choices[0].message`     | `InvalidResponse`       |
//! | 200 with `finish_reason == "content_filter"`              | `ContentFiltered`       |
//! | 200 with a non-null `message.refusal`                     | `Refused` (the refusal text) |
//! | 200 with no `content`                                     | `InvalidResponse`       |

use std::time::SystemTime;

use serde_json::Value;
use vlsbench_plugin_api::{BackendError, ErrorKind, Generation};

/// How much of a server's text an error message quotes.
pub const MAX_QUOTED_CHARS: usize = 500;

/// At most [`MAX_QUOTED_CHARS`] characters of `text`, with an ellipsis when cut.
pub fn truncate(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Seconds to wait from a `Retry-After` value: a number of seconds, or an HTTP date (seconds from
/// `now`, zero when already past). `None` when it is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<f64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then_some(secs);
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).map(|d| d.as_secs_f64()).unwrap_or(0.0))
}

/// The server's own error message: `error.message` (or a string `error`, or `message`) of a JSON
/// body, otherwise the body's text; truncated.
pub fn server_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let message = v
            .pointer("/error/message")
            .or_else(|| v.get("error").filter(|e| e.is_string()))
            .or_else(|| v.get("message"))
            .or_else(|| v.get("detail"))
            .and_then(Value::as_str);
        if let Some(m) = message {
            return truncate(m);
        }
    }
    truncate(&String::from_utf8_lossy(body))
}

/// Whether an error body says a content filter blocked the request.
fn is_content_filter_error(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    let error = v.get("error").unwrap_or(&v);
    ["code", "type"].iter().any(|field| {
        error.get(*field).and_then(Value::as_str).is_some_and(|s| {
            let s = s.to_ascii_lowercase();
            s.contains("content_filter") || s.contains("content_policy_violation")
        })
    })
}

/// The error for a non-success reply. `retry_after` is the raw `Retry-After` header.
pub fn classify_status(status: u16, retry_after: Option<&str>, body: &[u8], now: SystemTime) -> BackendError {
    let retry = || retry_after.and_then(|v| parse_retry_after(v, now));
    let quoted = || {
        let m = server_message(body);
        if m.is_empty() { String::new() } else { format!(": {m}") }
    };
    match status {
        429 => BackendError::new(ErrorKind::RateLimited, format!("rate limited (HTTP 429){}", quoted()))
            .with_retry_after(retry()),
        503 => BackendError::new(ErrorKind::ServerError, format!("server unavailable (HTTP 503){}", quoted()))
            .with_retry_after(retry()),
        500..=599 => BackendError::new(ErrorKind::ServerError, format!("server error (HTTP {status}){}", quoted())),
        401 | 403 => BackendError::bad_config(format!(
            "authentication failed (HTTP {status}); check the API key and the server's base URL"
        )),
        400 if is_content_filter_error(body) => {
            BackendError::new(ErrorKind::ContentFiltered, format!("blocked by a content filter{}", quoted()))
        }
        400..=499 => BackendError::bad_request(format!("request rejected (HTTP {status}){}", quoted())),
        _ => BackendError::new(ErrorKind::InvalidResponse, format!("unexpected HTTP status {status}{}", quoted())),
    }
}

fn invalid(message: impl Into<String>) -> BackendError {
    BackendError::new(ErrorKind::InvalidResponse, message)
}

/// Reads a 200 chat-completions body.
pub fn parse_completion(body: &[u8]) -> Result<Generation, BackendError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("the reply is not JSON ({e}): {}", truncate(&String::from_utf8_lossy(body)))))?;
    let Some(choice) = v.pointer("/choices/0") else {
        let detail = v.get("error").map(|_| server_message(body)).unwrap_or_else(|| truncate(&v.to_string()));
        return Err(invalid(format!("the reply has no choices[0]: {detail}")));
    };
    let finish_reason = choice.get("finish_reason").and_then(Value::as_str).map(str::to_string);
    if finish_reason.as_deref() == Some("content_filter") {
        return Err(BackendError::new(ErrorKind::ContentFiltered, "the reply was blocked by a content filter"));
    }
    let Some(message) = choice.get("message").filter(|m| m.is_object()) else {
        return Err(invalid("the reply has no choices[0].message"));
    };
    match message.get("refusal") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => return Err(BackendError::new(ErrorKind::Refused, text.clone())),
        Some(other) => return Err(BackendError::new(ErrorKind::Refused, other.to_string())),
    }
    let text = match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        // Some servers send content as a list of parts.
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str).is_none_or(|t| t == "text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<String>(),
        None | Some(Value::Null) => return Err(invalid("the reply's message has no content and no refusal")),
        Some(other) => {
            return Err(invalid(format!("the reply's content is not text: {}", truncate(&other.to_string()))));
        }
    };
    let tokens = v.pointer("/usage/completion_tokens").and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok());
    Ok(Generation { text, finish_reason, tokens })
}

/// The first model a `GET /models` reply lists.
pub fn parse_first_model(body: &[u8]) -> Result<String, BackendError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        invalid(format!("the model list is not JSON ({e}): {}", truncate(&String::from_utf8_lossy(body))))
    })?;
    match v.pointer("/data/0/id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => Ok(id.to_string()),
        _ => Err(BackendError::bad_config(format!(
            "the server lists no model to use for checkpoint \"local\": {}",
            truncate(&v.to_string())
        ))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn now() -> SystemTime {
        httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap()
    }

    #[test]
    fn retry_after_in_seconds_is_read_as_is() {
        assert_eq!(parse_retry_after("7", now()), Some(7.0));
        assert_eq!(parse_retry_after(" 0 ", now()), Some(0.0));
        assert_eq!(parse_retry_after("1.5", now()), Some(1.5));
    }

    #[test]
    fn retry_after_as_an_http_date_is_seconds_from_now() {
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now()), Some(30.0));
    }

    #[test]
    fn retry_after_in_the_past_means_no_wait() {
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now()), Some(0.0));
    }

    #[test]
    fn unreadable_or_negative_retry_after_is_ignored() {
        assert_eq!(parse_retry_after("soon", now()), None);
        assert_eq!(parse_retry_after("-3", now()), None);
        assert_eq!(parse_retry_after("", now()), None);
    }

    #[test]
    fn status_429_is_rate_limited_with_its_retry_after() {
        let e = classify_status(429, Some("12"), b"{}", now());
        assert_eq!(e.kind, ErrorKind::RateLimited);
        assert_eq!(e.retry_after_secs, Some(12.0));
        let e = classify_status(429, None, b"", now());
        assert_eq!(e.retry_after_secs, None);
    }

    #[test]
    fn status_503_is_a_server_error_that_honours_retry_after() {
        let e = classify_status(503, Some("Wed, 21 Oct 2015 07:28:05 GMT"), b"busy", now());
        assert_eq!(e.kind, ErrorKind::ServerError);
        assert_eq!(e.retry_after_secs, Some(5.0));
    }

    #[test]
    fn other_5xx_are_server_errors() {
        for status in [500, 502, 504] {
            assert_eq!(classify_status(status, None, b"oops", now()).kind, ErrorKind::ServerError);
        }
    }

    #[test]
    fn auth_failures_are_config_errors_that_do_not_echo_the_server() {
        let server = body(json!({"error": {"message": "Incorrect API key provided: sk-abc***xyz"}}));
        for status in [401, 403] {
            let e = classify_status(status, None, &server, now());
            assert_eq!(e.kind, ErrorKind::BadConfig);
            assert!(e.message.contains("authentication failed"), "{}", e.message);
            assert!(!e.message.contains("sk-abc"), "{}", e.message);
        }
    }

    #[test]
    fn a_400_from_a_content_filter_is_content_filtered() {
        let azure = body(json!({"error": {"code": "content_filter", "message": "filtered", "status": 400}}));
        assert_eq!(classify_status(400, None, &azure, now()).kind, ErrorKind::ContentFiltered);
        let openai = body(json!({"error": {"type": "invalid_request_error", "code": "content_policy_violation"}}));
        assert_eq!(classify_status(400, None, &openai, now()).kind, ErrorKind::ContentFiltered);
    }

    #[test]
    fn other_4xx_are_bad_requests_quoting_the_server() {
        let server = body(json!({"error": {"message": "max_tokens is too large", "code": "invalid_value"}}));
        let e = classify_status(400, None, &server, now());
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("max_tokens is too large"), "{}", e.message);
        let e = classify_status(404, None, b"no such route", now());
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("no such route"), "{}", e.message);
    }

    #[test]
    fn long_server_bodies_are_truncated() {
        let long = "x".repeat(10_000);
        let e = classify_status(422, None, long.as_bytes(), now());
        assert!(e.message.len() < 600, "{}", e.message.len());
        assert!(e.message.ends_with('…'));
    }

    #[test]
    fn a_well_formed_reply_gives_its_text_finish_reason_and_token_count() {
        let reply = body(json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": " Hello. ", "refusal": null},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
        }));
        let g = parse_completion(&reply).unwrap();
        assert_eq!(g.text, " Hello. ", "the text is returned unstripped");
        assert_eq!(g.finish_reason.as_deref(), Some("stop"));
        assert_eq!(g.tokens, Some(3));
    }

    #[test]
    fn a_reply_without_usage_or_finish_reason_still_gives_its_text() {
        let g = parse_completion(&body(json!({"choices": [{"message": {"content": "hi"}}]}))).unwrap();
        assert_eq!(g, Generation::new("hi"));
    }

    #[test]
    fn a_body_that_is_not_json_is_an_invalid_response() {
        assert_eq!(parse_completion(b"<html>502</html>").unwrap_err().kind, ErrorKind::InvalidResponse);
    }

    #[test]
    fn a_reply_without_choices_or_message_is_an_invalid_response() {
        for reply in [json!({}), json!({"choices": []}), json!({"choices": [{"finish_reason": "stop"}]})] {
            assert_eq!(parse_completion(&body(reply)).unwrap_err().kind, ErrorKind::InvalidResponse);
        }
    }

    #[test]
    fn finish_reason_content_filter_is_content_filtered() {
        let reply = body(json!({"choices": [{"message": {"content": null}, "finish_reason": "content_filter"}]}));
        assert_eq!(parse_completion(&reply).unwrap_err().kind, ErrorKind::ContentFiltered);
    }

    #[test]
    fn a_refusal_is_refused_with_its_text() {
        let reply = body(json!({"choices": [{"message": {"content": null, "refusal": "I can't help with that."},
                                             "finish_reason": "stop"}]}));
        let e = parse_completion(&reply).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Refused);
        assert_eq!(e.message, "I can't help with that.");
    }

    #[test]
    fn null_content_without_refusal_is_an_invalid_response() {
        let reply = body(json!({"choices": [{"message": {"content": null}, "finish_reason": "stop"}]}));
        assert_eq!(parse_completion(&reply).unwrap_err().kind, ErrorKind::InvalidResponse);
    }

    #[test]
    fn content_as_a_list_of_text_parts_is_joined() {
        let reply = body(json!({"choices": [{"message": {"content": [{"type": "text", "text": "a"},
                                                                       {"type": "text", "text": "b"}]}}]}));
        assert_eq!(parse_completion(&reply).unwrap().text, "ab");
    }

    #[test]
    fn the_first_listed_model_is_used_for_local() {
        let list = body(json!({"object": "list", "data": [{"id": "Qwen2-VL-7B"}, {"id": "other"}]}));
        assert_eq!(parse_first_model(&list).unwrap(), "Qwen2-VL-7B");
        assert_eq!(parse_first_model(&body(json!({"data": []}))).unwrap_err().kind, ErrorKind::BadConfig);
        assert_eq!(parse_first_model(b"nope").unwrap_err().kind, ErrorKind::InvalidResponse);
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        let s = "é".repeat(MAX_QUOTED_CHARS + 10);
        let t = truncate(&s);
        assert_eq!(t.chars().count(), MAX_QUOTED_CHARS + 1);
    }
}
