//! The mock server over real HTTP: replies, recording, concurrency.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use serde_json::{Value, json};
use vlsbench_mock_openai::{MockReply, MockServer, label_for, scripted, text_parts};

fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(20)).build().unwrap()
}

fn chat_body(user: &str) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": user}]})
}

#[test]
fn the_base_url_is_loopback_with_v1() {
    let server = MockServer::start(|_| MockReply::chat("x"));
    let url = server.base_url();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.ends_with("/v1"), "{url}");
    assert_eq!(server.addr().port(), url.trim_end_matches("/v1").rsplit(':').next().unwrap().parse::<u16>().unwrap());
}

#[test]
fn a_chat_reply_comes_back_and_the_request_is_recorded() {
    let server = MockServer::start(|_| MockReply::chat("hello there"));
    let reply: Value = client()
        .post(format!("{}/chat/completions", server.base_url()))
        .header("Authorization", "Bearer test-key")
        .json(&chat_body("hi"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(reply["choices"][0]["message"]["content"], "hello there");

    let recorded = server.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(server.request_count(), 1);
    let r = &recorded[0];
    assert_eq!((r.method.as_str(), r.path.as_str(), r.seq), ("POST", "/v1/chat/completions", 0));
    assert_eq!(r.header("authorization"), Some("Bearer test-key"));
    assert_eq!(r.body, chat_body("hi"));
    assert_eq!(serde_json::from_slice::<Value>(&r.raw_body).unwrap(), chat_body("hi"));
}

#[test]
fn requests_are_recorded_in_arrival_order() {
    let server = MockServer::start(|_| MockReply::chat("ok"));
    let client = client();
    for i in 0..5 {
        client.post(format!("{}/chat/completions", server.base_url())).json(&chat_body(&i.to_string())).send().unwrap();
    }
    let recorded = server.requests();
    for (i, r) in recorded.iter().enumerate() {
        assert_eq!(r.seq, i);
        assert_eq!(r.body["messages"][0]["content"], i.to_string());
    }
}

#[test]
fn a_body_that_is_not_json_is_recorded_as_null_with_its_raw_bytes() {
    let server = MockServer::start(|_| MockReply::status(400, "bad"));
    let response = client().post(format!("{}/chat/completions", server.base_url())).body("not json").send().unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert_eq!(response.text().unwrap(), "bad");
    let r = &server.requests()[0];
    assert_eq!(r.body, Value::Null);
    assert_eq!(r.raw_body, b"not json");
}

#[test]
fn status_headers_and_bodies_are_sent_as_given() {
    let server = MockServer::start(|req| match req.path.as_str() {
        "/v1/limited" => MockReply::rate_limited(3),
        "/v1/garbage" => MockReply::garbage(),
        "/v1/refusal" => MockReply::refusal("I can't."),
        "/v1/filtered" => MockReply::content_filtered(),
        _ => MockReply::status(503, "{\"error\": {\"message\": \"overloaded\"}}"),
    });
    let client = client();
    let get = |route: &str| client.get(format!("{}/{route}", server.base_url())).send().unwrap();

    let limited = get("limited");
    assert_eq!(limited.status().as_u16(), 429);
    assert_eq!(limited.headers()["retry-after"], "3");

    let garbage = get("garbage");
    assert_eq!(garbage.status().as_u16(), 200);
    assert!(serde_json::from_str::<Value>(&garbage.text().unwrap()).is_err());

    let refusal: Value = get("refusal").json().unwrap();
    assert_eq!(refusal["choices"][0]["message"]["refusal"], "I can't.");

    let filtered: Value = get("filtered").json().unwrap();
    assert_eq!(filtered["choices"][0]["finish_reason"], "content_filter");

    let unavailable = get("other");
    assert_eq!(unavailable.status().as_u16(), 503);
    assert_eq!(unavailable.headers()["content-type"], "application/json");
}

#[test]
fn the_scripted_server_lists_models_answers_and_judges() {
    let server = MockServer::start(scripted(Duration::ZERO));
    let client = client();
    let models: Value = client.get(format!("{}/models", server.base_url())).send().unwrap().json().unwrap();
    assert_eq!(models["data"][0]["id"], "mock-model");

    let answer: Value = client
        .post(format!("{}/chat/completions", server.base_url()))
        .json(&chat_body("Is this safe?"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "answer to: Is this safe?");

    let judge_body = json!({
        "model": "judge",
        "messages": [{"role": "system", "content": "You judge."}, {"role": "user", "content": "answer to: Is this safe?"}],
        "response_format": {"type": "json_object"},
    });
    let verdict: Value = client
        .post(format!("{}/chat/completions", server.base_url()))
        .json(&judge_body)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let verdict: Value = serde_json::from_str(verdict["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(verdict["label"], label_for(&text_parts(&judge_body)));
}

#[test]
fn a_panicking_handler_gives_a_500_and_the_server_keeps_serving() {
    let server = MockServer::start(|req| if req.seq == 0 { panic!("boom") } else { MockReply::chat("fine") });
    let client = client();
    let first = client.post(format!("{}/chat/completions", server.base_url())).json(&json!({})).send().unwrap();
    assert_eq!(first.status().as_u16(), 500);
    assert!(first.text().unwrap().contains("boom"));
    let second = client.post(format!("{}/chat/completions", server.base_url())).json(&json!({})).send().unwrap();
    assert_eq!(second.status().as_u16(), 200);
}

#[test]
fn a_long_delay_makes_a_client_time_out() {
    let server = MockServer::start(|_| MockReply::chat("late").with_delay(Duration::from_secs(30)));
    let client = Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let started = Instant::now();
    let e = client.post(format!("{}/chat/completions", server.base_url())).json(&json!({})).send().unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(server); // must not wait for the 30 s reply
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn sixty_four_concurrent_delayed_requests_are_served_at_once() {
    const N: usize = 64;
    let delay = Duration::from_millis(200);
    let server = MockServer::start(scripted(delay));
    let url = format!("{}/chat/completions", server.base_url());
    let client = Arc::new(client());
    let started = Instant::now();
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let client = Arc::clone(&client);
            let url = url.clone();
            std::thread::spawn(move || {
                let reply: Value = client.post(&url).json(&chat_body(&format!("q{i}"))).send().unwrap().json().unwrap();
                assert_eq!(reply["choices"][0]["message"]["content"], format!("answer to: q{i}"));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = started.elapsed();
    assert_eq!(server.request_count(), N);
    assert!(elapsed >= delay, "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "64 × 200 ms took {elapsed:?}");
    let mut seqs: Vec<usize> = server.requests().iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..N).collect::<Vec<_>>());
}

#[test]
fn the_server_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<MockServer>();
    assert_send_sync::<MockReply>();
}
