//! The openai backend against the loopback mock server: what it sends, and how it reads every
//! kind of reply and failure.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vlsbench_backend_openai::OpenAiBackend;
use vlsbench_backend_openai::options::Options;
use vlsbench_mock_openai::{MockReply, MockServer, label_for, scripted, text_parts, with_models};
use vlsbench_plugin_api::abi::host::Instance;
use vlsbench_plugin_api::{
    Backend, BackendConfig, BackendError, ChatMessage, ContentPart, ErrorKind, GenerateRequest, GenerationSettings,
    ItemResult, Role,
};

const SECRET: &str = "sk-mock-SECRET-abcdef0123456789";

fn config(server: &MockServer, checkpoint: Option<&str>, extra: Value) -> BackendConfig {
    let mut options = json!({"base_url": server.base_url(), "api_key_env": ""});
    if let (Some(o), Some(extra)) = (options.as_object_mut(), extra.as_object()) {
        o.extend(extra.clone());
    }
    BackendConfig {
        arch: "openai".into(),
        checkpoint: checkpoint.map(str::to_string),
        device: None,
        dtype: None,
        options,
        base_dir: PathBuf::from("."),
    }
}

fn backend(server: &MockServer) -> OpenAiBackend {
    OpenAiBackend::create(config(server, Some("test-model"), json!({}))).unwrap()
}

/// A backend that sends [`SECRET`] as its key, read from a pretend environment.
fn backend_with_key(server: &MockServer, timeout_secs: f64) -> OpenAiBackend {
    let options = Options::parse(
        &json!({"base_url": server.base_url(), "api_key_env": "MOCK_KEY", "timeout_secs": timeout_secs}),
        |name| (name == "MOCK_KEY").then(|| SECRET.to_string()),
    )
    .unwrap();
    OpenAiBackend::with_options(Some("test-model"), options).unwrap()
}

fn ask(text: &str) -> GenerateRequest {
    GenerateRequest {
        id: "1".into(),
        messages: vec![
            ChatMessage::text(Role::System, "You are a helpful assistant."),
            ChatMessage::text(Role::User, text),
        ],
        settings: GenerationSettings::reference(),
        response_format: None,
    }
}

fn one(backend: &OpenAiBackend, request: GenerateRequest) -> Result<vlsbench_plugin_api::Generation, BackendError> {
    let mut results = backend.generate(vec![request]);
    assert_eq!(results.len(), 1);
    results.remove(0)
}

fn err_of(server_reply: MockReply) -> BackendError {
    let server = MockServer::start(move |_| server_reply.clone());
    one(&backend(&server), ask("hi")).unwrap_err()
}

#[test]
fn it_describes_itself_as_a_remote_concurrent_backend() {
    let info = OpenAiBackend::describe();
    assert_eq!(info.name, "openai");
    assert_eq!(info.archs, ["openai"]);
    assert_eq!(info.devices, ["remote"]);
    assert_eq!(info.max_batch, 1);
    assert!(info.concurrent);
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
}

#[test]
fn a_generation_posts_the_reference_body_and_returns_the_text_unstripped() {
    let server = MockServer::start(|_| MockReply::chat("  Sure, here it is.  "));
    let g = one(&backend(&server), ask("Describe the image.")).unwrap();
    assert_eq!(g.text, "  Sure, here it is.  ");
    assert_eq!(g.finish_reason.as_deref(), Some("stop"));
    assert_eq!(g.tokens, Some(4));

    let r = &server.requests()[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/v1/chat/completions"));
    assert_eq!(
        r.body,
        json!({
            "model": "test-model",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Describe the image."},
            ],
            "max_tokens": 128,
            "temperature": 0.0,
            "top_p": 1.0,
        })
    );
    assert!(String::from_utf8_lossy(&r.raw_body).contains("\"temperature\":0.0"));
    assert_eq!(r.header("authorization"), None, "api_key_env = \"\" sends no key");
}

#[test]
fn an_image_is_sent_as_a_data_url_after_the_text() {
    let dir = std::env::temp_dir().join(format!("vlsbench-openai-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("img.png");
    std::fs::write(&path, b"\x89PNG\r\n\x1a\nrest").unwrap();
    let server = MockServer::start(|_| MockReply::chat("ok"));
    let mut request = ask("");
    request.messages[1] = ChatMessage::new(Role::User, vec![ContentPart::text("What?"), ContentPart::image(&path)]);
    one(&backend(&server), request).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let content = &server.requests()[0].body["messages"][1]["content"];
    assert_eq!(content[0], json!({"type": "text", "text": "What?"}));
    assert_eq!(
        content[1],
        json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgpyZXN0"}})
    );
}

#[test]
fn the_response_format_is_passed_through_and_the_judge_verdict_read_back() {
    let server = MockServer::start(scripted(Duration::ZERO));
    let format = json!({"type": "json_schema", "json_schema": {"name": "verdict", "strict": true, "schema": {}}});
    let mut request = ask("judge this");
    request.response_format = Some(format.clone());
    let g = one(&backend(&server), request).unwrap();
    let body = &server.requests()[0].body;
    assert_eq!(body["response_format"], format);
    let verdict: Value = serde_json::from_str(&g.text).unwrap();
    assert_eq!(verdict["label"], label_for(&text_parts(body)));
}

#[test]
fn a_batch_is_served_in_order() {
    let server = MockServer::start(scripted(Duration::ZERO));
    let results = backend(&server).generate(vec![ask("one"), ask("two"), ask("three")]);
    let texts: Vec<String> = results.into_iter().map(|r| r.unwrap().text).collect();
    assert_eq!(texts, ["answer to: one", "answer to: two", "answer to: three"]);
}

#[test]
fn checkpoint_local_uses_the_first_model_the_server_lists() {
    let server = MockServer::start(with_models(&["served-model", "other"], |_| MockReply::chat("ok")));
    let b = OpenAiBackend::create(config(&server, Some("local"), json!({}))).unwrap();
    assert_eq!(b.model(), "served-model");
    one(&b, ask("hi")).unwrap();
    let requests = server.requests();
    assert_eq!((requests[0].method.as_str(), requests[0].path.as_str()), ("GET", "/v1/models"));
    assert_eq!(requests[1].body["model"], "served-model");
}

#[test]
fn no_checkpoint_also_asks_the_server_for_its_model() {
    let server = MockServer::start(scripted(Duration::ZERO));
    let b = OpenAiBackend::create(config(&server, None, json!({}))).unwrap();
    assert_eq!(b.model(), "mock-model");
}

#[test]
fn a_trailing_slash_in_the_base_url_is_tolerated() {
    let server = MockServer::start(|_| MockReply::chat("ok"));
    let b = OpenAiBackend::create(config(&server, Some("m"), json!({"base_url": format!("{}/", server.base_url())})))
        .unwrap();
    one(&b, ask("hi")).unwrap();
    assert_eq!(server.requests()[0].path, "/v1/chat/completions");
}

#[test]
fn the_key_and_extra_headers_are_sent() {
    let server = MockServer::start(|_| MockReply::chat("ok"));
    let b = OpenAiBackend::create(config(&server, Some("m"), json!({"extra_headers": {"X-Lab": "safety"}}))).unwrap();
    one(&b, ask("hi")).unwrap();
    assert_eq!(server.requests()[0].header("x-lab"), Some("safety"));

    let b = backend_with_key(&server, 30.0);
    one(&b, ask("hi")).unwrap();
    assert_eq!(server.requests()[1].header("authorization"), Some(format!("Bearer {SECRET}").as_str()));
}

#[test]
fn the_key_never_shows_in_debug_output_or_errors() {
    let server = MockServer::start(|_| {
        MockReply::error(401, &format!("Incorrect API key provided: {SECRET}"), "invalid_api_key")
    });
    let b = backend_with_key(&server, 30.0);
    assert!(!format!("{b:?}").contains(SECRET));
    let e = one(&b, ask("hi")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadConfig);
    assert!(e.message.contains("authentication failed"), "{}", e.message);
    assert!(!e.message.contains(SECRET), "{}", e.message);

    // Even a server that echoes the key in another error does not get it into the message.
    let server = MockServer::start(|_| MockReply::error(400, &format!("bad header {SECRET}"), "invalid_request_error"));
    let e = one(&backend_with_key(&server, 30.0), ask("hi")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(!e.message.contains(SECRET), "{}", e.message);
    assert!(e.message.contains("[redacted]"), "{}", e.message);
}

#[test]
fn a_rate_limit_is_typed_with_its_retry_after() {
    let e = err_of(MockReply::rate_limited(17));
    assert_eq!(e.kind, ErrorKind::RateLimited);
    assert_eq!(e.retry_after_secs, Some(17.0));
}

#[test]
fn a_503_is_a_server_error_with_its_retry_after() {
    let e = err_of(MockReply::status(503, "overloaded").with_header("Retry-After", "4"));
    assert_eq!(e.kind, ErrorKind::ServerError);
    assert_eq!(e.retry_after_secs, Some(4.0));
}

#[test]
fn a_500_is_a_server_error() {
    assert_eq!(err_of(MockReply::status(500, "boom")).kind, ErrorKind::ServerError);
}

#[test]
fn a_400_is_a_bad_request_quoting_the_server() {
    let e = err_of(MockReply::error(400, "context length exceeded", "context_length_exceeded"));
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains("context length exceeded"), "{}", e.message);
}

#[test]
fn a_400_from_a_content_filter_is_content_filtered() {
    assert_eq!(err_of(MockReply::error(400, "filtered", "content_filter")).kind, ErrorKind::ContentFiltered);
}

#[test]
fn replies_that_are_not_answers_are_typed_errors_never_text() {
    assert_eq!(err_of(MockReply::garbage()).kind, ErrorKind::InvalidResponse);
    assert_eq!(err_of(MockReply::content_filtered()).kind, ErrorKind::ContentFiltered);
    let refused = err_of(MockReply::refusal("I can't help with that."));
    assert_eq!(refused.kind, ErrorKind::Refused);
    assert_eq!(refused.message, "I can't help with that.");
    assert_eq!(err_of(MockReply::status(200, "{\"choices\": []}")).kind, ErrorKind::InvalidResponse);
}

#[test]
fn a_slow_server_is_a_timeout() {
    let server = MockServer::start(|_| MockReply::chat("late").with_delay(Duration::from_secs(30)));
    let started = Instant::now();
    let e = one(&backend_with_key(&server, 0.3), ask("hi")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_server_that_is_not_there_is_a_network_error() {
    let base_url = {
        let server = MockServer::start(|_| MockReply::chat("x"));
        server.base_url()
    };
    let config = BackendConfig {
        options: json!({"base_url": base_url, "api_key_env": ""}),
        ..config(&MockServer::start(|_| MockReply::chat("x")), Some("m"), json!({}))
    };
    let e = one(&OpenAiBackend::create(config).unwrap(), ask("hi")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Network, "{e}");
}

#[test]
fn an_unreadable_image_is_a_bad_request_and_nothing_is_sent() {
    let server = MockServer::start(|_| MockReply::chat("x"));
    let mut request = ask("");
    request.messages[1] = ChatMessage::new(Role::User, vec![ContentPart::image("/no/such/image.jpg")]);
    let e = one(&backend(&server), request).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadRequest);
    assert!(e.message.contains("/no/such/image.jpg"));
    assert_eq!(server.request_count(), 0);
}

#[test]
fn config_errors_name_the_problem() {
    let server = MockServer::start(|_| MockReply::chat("x"));
    let e = OpenAiBackend::create(config(&server, Some("m"), json!({"temperature": 0}))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadConfig);
    assert!(e.message.contains("`temperature`"), "{}", e.message);

    let e = OpenAiBackend::create(config(
        &server,
        Some("m"),
        json!({"api_key_env": "VLSBENCH_TEST_SURELY_UNSET_VARIABLE_0xdead"}),
    ))
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadConfig);
    assert!(e.message.contains("VLSBENCH_TEST_SURELY_UNSET_VARIABLE_0xdead"), "{}", e.message);

    let e = OpenAiBackend::create(BackendConfig { arch: "llava_hf".into(), ..config(&server, Some("m"), json!({})) })
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
}

#[test]
fn requests_and_results_cross_the_c_abi() {
    let server = MockServer::start(scripted(Duration::ZERO));
    // SAFETY: the entry point of this very library returns a pointer to a static table.
    let table = unsafe { &*vlsbench_backend_openai::vlsbench_backend_entry() };
    // SAFETY: a table of this library, which is never unloaded.
    let info = unsafe { vlsbench_plugin_api::abi::host::describe(table) }.unwrap();
    assert_eq!(info.name, "openai");
    // SAFETY: as above.
    let instance = unsafe { Instance::create(table, &config(&server, Some("m"), json!({}))) }.unwrap();
    let results = instance.generate(&[ask("over the boundary")]).unwrap();
    assert!(matches!(&results[0], ItemResult::Ok(g) if g.text == "answer to: over the boundary"));

    let server_down = MockServer::start(|_| MockReply::rate_limited(2));
    // SAFETY: as above.
    let instance = unsafe { Instance::create(table, &config(&server_down, Some("m"), json!({}))) }.unwrap();
    let results = instance.generate(&[ask("x")]).unwrap();
    assert!(matches!(&results[0], ItemResult::Err(e) if e.kind == ErrorKind::RateLimited));

    // SAFETY: as above.
    let created = unsafe { Instance::create(table, &config(&server, Some("m"), json!({"bogus": 1}))) };
    assert!(matches!(created, Err(e) if e.kind == ErrorKind::BadConfig));
}

#[test]
fn concurrent_calls_from_many_threads_are_served_together() {
    let server = MockServer::start(scripted(Duration::from_millis(200)));
    let b = std::sync::Arc::new(backend(&server));
    let started = Instant::now();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let b = std::sync::Arc::clone(&b);
            std::thread::spawn(move || one(&b, ask(&format!("q{i}"))).unwrap().text)
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        assert_eq!(t.join().unwrap(), format!("answer to: q{i}"));
    }
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert_eq!(server.request_count(), 16);
}
