//! `[run] concurrency = "auto"` against a server that enforces a rate limit (429 + Retry-After
//! beyond R requests a second per model), and the default it is for API backends.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use vlsbench_mock_openai::{MockServer, rate_limited, scripted};

use crate::support::*;

#[test]
fn automatic_concurrency_finds_the_rate_limit_and_no_item_fails_for_it() {
    let tmp = tempdir();
    let ds = Dataset::write(&tmp.path().join("data"), simple_items(60, "What is in picture"));
    let (handler, limit) = rate_limited(40.0, scripted(Duration::from_millis(20)));
    let server = MockServer::start(handler);
    let out = tmp.path().join("out");
    // No `concurrency`: an API backend gets "auto". Two tries only: a fixed limit that guessed
    // too high would lose items to 429s; "auto" treats them as its signal.
    let mut m = openai_manifest(&ds.root, &server.base_url(), &out, "auto");
    m["run"].as_object_mut().unwrap().remove("concurrency");
    m["run"]["max_tries"] = json!(2);
    m["run"]["max_concurrency"] = json!(64);
    let manifest = write_manifest(&tmp.path().join("auto.toml"), &m);
    let dir = RunDir(out.join("auto"));
    let outcome = run(&manifest, dir.path()).arg("--fail-on-unscored").output();
    outcome.success().stdout_has("concurrency: model auto").stdout_has("concurrency: judge model auto");
    assert!(limit.refused.load(Ordering::Relaxed) > 0, "the limit was never reached:{}", outcome.report());
    assert_eq!(dir.summary()["overall"]["judged"], 60, "{}", outcome.report());
    // run.json records what each endpoint's limit did.
    let info = dir.json("run.json");
    let stats = info["concurrency"].as_array().unwrap();
    assert_eq!(stats.len(), 2, "{}", pretty(&info));
    assert!(stats.iter().all(|s| s["mode"] == "auto"), "{}", pretty(&info));
    assert!(stats.iter().any(|s| s["throttled"].as_u64().unwrap() > 0), "{}", pretty(&info));
}

#[test]
fn a_concurrency_that_is_neither_a_number_nor_auto_is_refused_by_name() {
    let tmp = tempdir();
    let ds = Dataset::write(&tmp.path().join("data"), simple_items(1, "What is this"));
    let mut m = openai_manifest(&ds.root, "http://127.0.0.1:9/v1", &tmp.path().join("out"), "bad");
    m["run"]["concurrency"] = json!("fast");
    let manifest = write_manifest(&tmp.path().join("bad.toml"), &m);
    host(["validate".into(), manifest.into_os_string()])
        .output()
        .failure()
        .stderr_has("\"fast\"")
        .stderr_has("\"auto\"");
}
