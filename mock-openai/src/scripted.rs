//! Ready-made deterministic behaviour, and helpers to read the requests a test receives.
//!
//! [`scripted()`] answers like a model and a judge whose answers a test can recompute:
//! a generation request gets `"answer to: <last user text>"`, a judge request (one with a
//! `response_format`) gets a verdict whose label is [`label_for`] its text parts.

use std::time::Duration;

use serde_json::{Value, json};
use vlsbench_plugin_api::Label;

use crate::reply::{MOCK_MODEL, MockReply};
use crate::server::RecordedRequest;

/// Whether a chat-completions body is a judge's request: it has a (non-null) `response_format`.
pub fn is_judge_request(body: &Value) -> bool {
    body.get("response_format").is_some_and(|f| !f.is_null())
}

/// The texts of a message's `content`: the string itself, or the `text` of each text part.
fn content_texts(content: &Value) -> Vec<String> {
    match content {
        Value::String(s) => vec![s.clone()],
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str).map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// All text of all messages of a chat-completions body, in order: a string `content` is one
/// part, a list `content` gives the `text` of each of its text parts. Images are skipped.
pub fn text_parts(body: &Value) -> Vec<String> {
    messages(body).flat_map(|m| m.get("content").map(content_texts).unwrap_or_default()).collect()
}

/// The last text part of the last user message that has text, if any.
pub fn last_user_text(body: &Value) -> Option<String> {
    messages(body)
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .filter_map(|m| m.get("content").map(content_texts).and_then(|t| t.last().cloned()))
        .next_back()
}

fn messages(body: &Value) -> impl DoubleEndedIterator<Item = &Value> {
    body.get("messages").and_then(Value::as_array).map(|m| m.as_slice()).unwrap_or_default().iter()
}

/// 64-bit FNV-1a.
fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.into_iter().fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// The label [`scripted()`] gives a judge request with these text parts: 1, 2 or 3.
///
/// It is `fnv1a64(part₀ ‖ 0xFF ‖ part₁ ‖ 0xFF ‖ ...) % 3 + 1` (each part's UTF-8 bytes followed
/// by a 0xFF byte, which no UTF-8 text contains), so it is stable across runs and platforms.
pub fn label_for(text_parts: &[String]) -> u8 {
    let hash = fnv1a64(text_parts.iter().flat_map(|p| p.bytes().chain(std::iter::once(0xff))));
    // `hash % 3` is 0, 1 or 2.
    Label::ALL[(hash % 3) as usize].code()
}

/// The verdict text [`scripted()`] answers a judge request with: a JSON object
/// `{"label": L, "label_str": "...", "explanation": "..."}`, as a string.
pub fn judge_verdict(text_parts: &[String]) -> String {
    let code = label_for(text_parts);
    let label = Label::ALL.into_iter().find(|l| l.code() == code).unwrap_or(Label::Unsafe);
    json!({
        "label": code,
        "label_str": label.label_str(),
        "explanation": format!("mock verdict {code} ({}) from a hash of the request's text", label.label_str()),
    })
    .to_string()
}

/// A deterministic model and judge:
///
/// - `GET .../models` → [`MockReply::models`]`(&["mock-model"])`, at once;
/// - `POST .../chat/completions` with a judge request ([`is_judge_request`]) →
///   [`MockReply::chat`] of [`judge_verdict`] of its [`text_parts`], after `delay`;
/// - `POST .../chat/completions` otherwise → [`MockReply::chat`]`("answer to: <last user text>")`
///   ([`last_user_text`], empty when none), after `delay`;
/// - a chat-completions body that is not JSON → 400; any other route → 404.
pub fn scripted(delay: Duration) -> impl Fn(&RecordedRequest) -> MockReply + Send + Sync + 'static {
    move |req: &RecordedRequest| {
        if req.method == "GET" && req.path.ends_with("/models") {
            return MockReply::models(&[MOCK_MODEL]);
        }
        if req.method != "POST" || !req.path.ends_with("/chat/completions") {
            return MockReply::error(404, &format!("no route {} {}", req.method, req.path), "not_found");
        }
        if !req.body.is_object() {
            return MockReply::error(400, "the request body is not a JSON object", "invalid_request_error");
        }
        let reply = if is_judge_request(&req.body) {
            MockReply::chat(&judge_verdict(&text_parts(&req.body)))
        } else {
            MockReply::chat(&format!("answer to: {}", last_user_text(&req.body).unwrap_or_default()))
        };
        reply.with_delay(delay)
    }
}

/// Wraps `handler` so that `GET .../models` is answered with `ids` and everything else goes to
/// `handler`.
pub fn with_models(
    ids: &[&str],
    handler: impl Fn(&RecordedRequest) -> MockReply + Send + Sync + 'static,
) -> impl Fn(&RecordedRequest) -> MockReply + Send + Sync + 'static {
    let models = MockReply::models(ids);
    move |req: &RecordedRequest| {
        if req.method == "GET" && req.path.ends_with("/models") { models.clone() } else { handler(req) }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn request(method: &str, path: &str, body: Value) -> RecordedRequest {
        RecordedRequest {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            raw_body: body.to_string().into_bytes(),
            body,
            seq: 0,
        }
    }

    fn content(reply: &MockReply) -> String {
        reply.body_json()["choices"][0]["message"]["content"].as_str().unwrap().to_string()
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(fnv1a64(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(*b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn labels_are_stable_and_cover_all_three_values() {
        let mut seen = [false; 3];
        for i in 0..60 {
            let parts = vec![format!("prompt {i}"), "answer".to_string()];
            let label = label_for(&parts);
            assert!((1..=3).contains(&label));
            assert_eq!(label, label_for(&parts));
            seen[usize::from(label - 1)] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    #[test]
    fn the_part_boundaries_matter_to_the_label_hash() {
        let joined = fnv1a64("ab".bytes().chain([0xff]));
        let split = fnv1a64("a".bytes().chain([0xff]).chain("b".bytes()).chain([0xff]));
        assert_ne!(joined, split);
    }

    #[test]
    fn text_parts_reads_string_and_list_contents_in_order() {
        let body = json!({"messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "q1"},
                {"type": "text", "text": "q2"},
            ]},
        ]});
        assert_eq!(text_parts(&body), ["sys", "q1", "q2"]);
        assert_eq!(last_user_text(&body).as_deref(), Some("q2"));
        assert!(text_parts(&json!({})).is_empty());
    }

    #[test]
    fn a_judge_request_is_one_with_a_response_format() {
        assert!(is_judge_request(&json!({"response_format": {"type": "json_object"}})));
        assert!(!is_judge_request(&json!({"response_format": null})));
        assert!(!is_judge_request(&json!({"messages": []})));
    }

    #[test]
    fn scripted_answers_a_generation_with_the_last_user_text() {
        let handler = scripted(Duration::from_millis(5));
        let reply = handler(&request(
            "POST",
            "/v1/chat/completions",
            json!({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "What is this?"}]}),
        ));
        assert_eq!(content(&reply), "answer to: What is this?");
        assert_eq!(reply.delay, Duration::from_millis(5));
    }

    #[test]
    fn scripted_answers_a_judge_request_with_a_recomputable_verdict() {
        let body = json!({
            "messages": [{"role": "user", "content": "judge this: answer to: hi"}],
            "response_format": {"type": "json_object"},
        });
        let reply = scripted(Duration::ZERO)(&request("POST", "/v1/chat/completions", body.clone()));
        let verdict: Value = serde_json::from_str(&content(&reply)).unwrap();
        let expected = label_for(&text_parts(&body));
        assert_eq!(verdict["label"], expected);
        assert_eq!(verdict["label_str"], Label::ALL[usize::from(expected - 1)].label_str());
        assert!(verdict["explanation"].is_string());
    }

    #[test]
    fn scripted_lists_one_model_and_rejects_other_routes() {
        let handler = scripted(Duration::ZERO);
        assert_eq!(handler(&request("GET", "/v1/models", Value::Null)).body_json()["data"][0]["id"], MOCK_MODEL);
        assert_eq!(handler(&request("POST", "/v1/completions", json!({}))).status, 404);
        assert_eq!(handler(&request("POST", "/v1/chat/completions", Value::Null)).status, 400);
    }

    #[test]
    fn with_models_answers_the_model_list_and_passes_the_rest_on() {
        let handler = with_models(&["a", "b"], |_| MockReply::chat("x"));
        assert_eq!(handler(&request("GET", "/v1/models", Value::Null)).body_json()["data"][1]["id"], "b");
        assert_eq!(content(&handler(&request("POST", "/v1/chat/completions", json!({})))), "x");
    }
}
