//! [`MockReply`]: what the mock server answers, with constructors for the replies an
//! OpenAI-compatible server gives (a chat completion, a refusal, a filtered reply, an error
//! status, a rate limit, a model list) and for a broken one ([`MockReply::garbage`]).

use std::time::Duration;

use serde_json::{Value, json};

/// The model id the ready-made replies name.
pub const MOCK_MODEL: &str = "mock-model";

/// One reply: status, headers, body, and how long the server waits before sending it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockReply {
    pub status: u16,
    /// Extra headers (`content-type` is among them when the constructor knows it).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Held before the reply is sent; the server keeps serving other requests meanwhile. A
    /// delay longer than the client's timeout simulates a timeout.
    pub delay: Duration,
}

impl MockReply {
    fn json(status: u16, body: &Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
            delay: Duration::ZERO,
        }
    }

    fn completion(message: Value, finish_reason: &str, completion_tokens: usize) -> Self {
        Self::json(
            200,
            &json!({
                "id": "chatcmpl-mock",
                "object": "chat.completion",
                "created": 0,
                "model": MOCK_MODEL,
                "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish_reason}],
                "usage": {"prompt_tokens": 0, "completion_tokens": completion_tokens, "total_tokens": completion_tokens},
            }),
        )
    }

    /// 200 with a well-formed `chat.completion`: `choices[0].message.content` is `text`
    /// (`refusal` null), `finish_reason` `"stop"`, and `usage.completion_tokens` the number of
    /// whitespace-separated words of `text`.
    pub fn chat(text: &str) -> Self {
        let words = text.split_whitespace().count();
        Self::completion(json!({"role": "assistant", "content": text, "refusal": null}), "stop", words)
    }

    /// 200 with an OpenAI refusal: `message.content` null, `message.refusal` = `text`.
    pub fn refusal(text: &str) -> Self {
        Self::completion(json!({"role": "assistant", "content": null, "refusal": text}), "stop", 0)
    }

    /// 200 whose `finish_reason` is `"content_filter"`, `message.content` null.
    pub fn content_filtered() -> Self {
        Self::completion(json!({"role": "assistant", "content": null, "refusal": null}), "content_filter", 0)
    }

    /// Any status with `body` as given (`content-type: application/json` when `body` is JSON,
    /// `text/plain` otherwise).
    pub fn status(code: u16, body: &str) -> Self {
        let content_type = if serde_json::from_str::<Value>(body).is_ok() { "application/json" } else { "text/plain" };
        Self {
            status: code,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
        }
    }

    /// An OpenAI-style error body (`{"error": {"message", "type", "code"}}`) with `code` as status.
    pub fn error(code: u16, message: &str, error_code: &str) -> Self {
        Self::json(code, &json!({"error": {"message": message, "type": error_code, "param": null, "code": error_code}}))
    }

    /// 429 with `Retry-After: <retry_after_secs>` and an OpenAI-style error body.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self::error(429, "Rate limit reached (mock)", "rate_limit_exceeded")
            .with_header("retry-after", &retry_after_secs.to_string())
    }

    /// 200 with a body that is not JSON.
    pub fn garbage() -> Self {
        Self {
            status: 200,
            headers: vec![("content-type".into(), "text/html".into())],
            body: b"<html><body>this is not JSON {\"choices\": [</body></html>".to_vec(),
            delay: Duration::ZERO,
        }
    }

    /// 200 with a `GET /v1/models` list of `ids`, in order.
    pub fn models(ids: &[&str]) -> Self {
        let data: Vec<Value> =
            ids.iter().map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "mock"})).collect();
        Self::json(200, &json!({"object": "list", "data": data}))
    }

    /// The same reply, sent after `d`.
    pub fn with_delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    /// The same reply with one more header (replacing a header of the same name).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The body as JSON (`Null` when it is not JSON), for tests of the replies themselves.
    pub fn body_json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_chat_reply_is_a_well_formed_completion() {
        let r = MockReply::chat("two words");
        assert_eq!(r.status, 200);
        let v = r.body_json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], "two words");
        assert_eq!(v["choices"][0]["message"]["refusal"], Value::Null);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["completion_tokens"], 2);
    }

    #[test]
    fn a_refusal_has_null_content_and_the_refusal_text() {
        let v = MockReply::refusal("no").body_json();
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(v["choices"][0]["message"]["refusal"], "no");
    }

    #[test]
    fn a_filtered_reply_says_content_filter() {
        let v = MockReply::content_filtered().body_json();
        assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
    }

    #[test]
    fn a_rate_limit_carries_retry_after() {
        let r = MockReply::rate_limited(7);
        assert_eq!(r.status, 429);
        assert!(r.headers.contains(&("retry-after".to_string(), "7".to_string())));
    }

    #[test]
    fn garbage_is_not_json() {
        assert!(serde_json::from_slice::<Value>(&MockReply::garbage().body).is_err());
    }

    #[test]
    fn a_status_reply_keeps_its_body_as_given() {
        let r = MockReply::status(418, "teapot");
        assert_eq!((r.status, r.body.as_slice()), (418, b"teapot".as_slice()));
    }

    #[test]
    fn a_model_list_keeps_its_order() {
        let v = MockReply::models(&["a", "b"]).body_json();
        assert_eq!(v["data"][0]["id"], "a");
        assert_eq!(v["data"][1]["id"], "b");
    }
}
