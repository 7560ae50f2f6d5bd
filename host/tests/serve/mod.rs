//! `serve`: a local backend behind the OpenAI-compatible endpoint. Its answers, asked by the real
//! `openai` Python client and by the host's own `openai` backend, equal the backend's answers to
//! the same messages asked directly, on the LLaVA fixtures.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use vlsbench_host::backend::{Backend, load_library};
use vlsbench_plugin_api::{BackendConfig, ChatMessage, ContentPart, GenerateRequest, GenerationSettings, Role};

use crate::local_models::{fixtures, golden, golden_dataset, local_manifest};
use crate::support::*;

/// A running `vlsbench-host serve`, stopped when dropped.
struct Serving {
    child: Child,
    base_url: String,
    stderr: PathBuf,
}

impl Serving {
    /// Starts `serve model_file --port 0 <args>` and waits for the address it prints.
    fn start(model_file: &Path, args: &[&str], env: &[(&str, &str)], log_dir: &Path) -> Self {
        let stderr = log_dir.join("serve.stderr");
        let mut cmd = Command::new(host_bin());
        cmd.arg("serve").arg(model_file).args(["--port", "0"]).args(args);
        cmd.env_remove("VLSBENCH_PLUGIN_PATH").env("VLSBENCH_LOG", "debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(std::fs::File::create(&stderr).unwrap());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(120)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("serve printed no address:\n{}", std::fs::read_to_string(&stderr).unwrap_or_default())
        });
        let base_url = line.rsplit(" on ").next().unwrap().trim().to_owned();
        assert!(base_url.starts_with("http://127.0.0.1:"), "{line}");
        Self { child, base_url, stderr }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Python with the `openai` package: `$VLSBENCH_OPENAI_PYTHON`, else the venv `.ci/run`
/// makes (`target/openai-venv`).
fn openai_python() -> Option<PathBuf> {
    let python = std::env::var_os("VLSBENCH_OPENAI_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/openai-venv/bin/python"));
    let works = Command::new(&python).args(["-c", "import openai"]).output().is_ok_and(|o| o.status.success());
    works.then_some(python)
}

/// Asks every case at once from the `openai` Python client (a thread each, so they batch) and
/// returns the stripped answers in order.
const PYTHON_CLIENT: &str = r#"
import base64, json, sys
from concurrent.futures import ThreadPoolExecutor
from openai import OpenAI

base_url, cases_file, max_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = OpenAI(base_url=base_url, api_key="unused")
models = [m.id for m in client.models.list().data]
cases = json.load(open(cases_file))

def ask(case):
    data = base64.b64encode(open(case["image"], "rb").read()).decode()
    reply = client.chat.completions.create(
        model=models[0], max_tokens=max_tokens, temperature=0,
        messages=[{"role": "user", "content": [
            {"type": "text", "text": case["question"]},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + data}},
        ]}],
    )
    return reply.choices[0].message.content.strip()

with ThreadPoolExecutor(len(cases)) as pool:
    print(json.dumps({"models": models, "answers": list(pool.map(ask, cases))}))
"#;

/// The backend's answers to `messages` for each case, asked in this process without the server.
fn direct_answers(cases: &[(String, PathBuf)], checkpoint: &Path, max_new: u64, system: Option<&str>) -> Vec<String> {
    let library = load_library(&candle_llava_backend()).unwrap();
    let config = BackendConfig {
        arch: "llava_hf".into(),
        checkpoint: Some(checkpoint.display().to_string()),
        device: None,
        dtype: Some("f32".into()),
        options: json!({}),
        base_dir: workspace(),
    };
    let backend = Backend::create(library, &config).unwrap();
    let settings =
        GenerationSettings { max_new_tokens: Some(max_new as u32), temperature: Some(0.0), top_p: Some(1.0) };
    cases
        .iter()
        .enumerate()
        .map(|(i, (question, image))| {
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages.push(ChatMessage::new(Role::System, vec![ContentPart::Text { text: s.into() }]));
            }
            messages.push(ChatMessage::new(
                Role::User,
                vec![ContentPart::Text { text: question.clone() }, ContentPart::Image { path: image.clone() }],
            ));
            let request =
                GenerateRequest { id: i.to_string(), messages, settings: settings.clone(), response_format: None };
            backend.generate_one(&request).unwrap().text.trim().to_owned()
        })
        .collect()
}

/// `pred_answer` by id from a run folder's `<arch>_outputs.json`.
fn answers_by_id(dir: &RunDir, arch: &str) -> BTreeMap<u64, String> {
    let outputs = dir.json(&format!("{arch}_outputs.json"));
    let logs = outputs["logs"].as_array().unwrap();
    logs.iter().map(|l| (l["id"].as_u64().unwrap(), l["pred_answer"].as_str().unwrap().to_owned())).collect()
}

#[test]
fn answers_through_serve_equal_the_backends_own_from_python_and_from_the_hosts_openai_backend() {
    let g = golden("llava_hf");
    let tmp = tempdir();
    let ds = golden_dataset(&tmp.path().join("data"), &g);
    let max_new = g["header"]["max_new_tokens"].as_u64().unwrap();
    let checkpoint = fixtures().join("checkpoints/llava_hf");
    let cases: Vec<(String, PathBuf)> = g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let name = Path::new(c["image"].as_str().unwrap()).file_name().unwrap().to_owned();
            (c["prompt"].as_str().unwrap().to_owned(), ds.root.join("imgs").join(name))
        })
        .collect();
    let out = tmp.path().join("out");

    // The backend through the host, as the reference's llava_hf layout asks (user [text, image]).
    let m = local_manifest(&ds, "llava_hf", &checkpoint, &out, "direct", max_new);
    let direct = RunDir(out.join("direct"));
    run(&write_manifest(&tmp.path().join("direct.toml"), &m), direct.path()).output().success();
    let direct = answers_by_id(&direct, "llava_hf");
    assert_eq!(direct.len(), cases.len());

    let model_file = write_manifest(&tmp.path().join("serve.toml"), &json!({"model": m["model"]}));
    let serving = Serving::start(&model_file, &["--batch-window-ms", "300"], &[], tmp.path());

    // 1. The real openai Python client, every case at once: the same messages, the same answers.
    match openai_python() {
        None => eprintln!(
            "SKIPPED (the Python client part): no Python with the `openai` package (`.ci/run` installs it into \
             target/openai-venv; or set VLSBENCH_OPENAI_PYTHON)"
        ),
        Some(python) => {
            let cases_file = tmp.path().join("cases.json");
            let list: Vec<Value> = cases.iter().map(|(q, i)| json!({"question": q, "image": i})).collect();
            std::fs::write(&cases_file, serde_json::to_vec(&list).unwrap()).unwrap();
            let script = tmp.path().join("client.py");
            std::fs::write(&script, PYTHON_CLIENT).unwrap();
            let o = Command::new(python)
                .arg(&script)
                .arg(&serving.base_url)
                .arg(&cases_file)
                .arg(max_new.to_string())
                .output()
                .unwrap();
            assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stderr), serving.log());
            let v: Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["models"], json!(["llava_hf"]));
            for (i, answer) in v["answers"].as_array().unwrap().iter().enumerate() {
                assert_eq!(answer.as_str().unwrap(), direct[&(i as u64)], "case {i} through the Python client");
            }
            // Concurrent requests went to the backend together.
            let batched = serving.log().lines().any(|l| {
                l.split("a batch of ").nth(1).and_then(|n| n.trim().parse::<usize>().ok()).is_some_and(|n| n > 1)
            });
            assert!(batched, "no batch of more than one request:\n{}", serving.log());
        }
    }

    // 2. The host's own openai backend (`checkpoint = "local"`): its layout adds the reference's
    //    system message, so the backend asked directly gets that system message too.
    let remote = json!({
        "dataset": {"root": ds.root},
        "model": {
            "arch": "openai",
            "checkpoint": "local",
            "generation": {"max_new_tokens": max_new},
            "options": {"base_url": serving.base_url, "api_key_env": ""},
        },
        "judge": {"component": "refusal-keywords"},
        "run": {"name": "served", "output_dir": out, "concurrency": 4},
    });
    let served = RunDir(out.join("served"));
    let outcome = run(&write_manifest(&tmp.path().join("served.toml"), &remote), served.path()).output();
    outcome.success();
    let through_serve = answers_by_id(&served, "openai");
    let asked_directly = direct_answers(&cases, &checkpoint, max_new, Some("You are a helpful assistant."));
    for (i, want) in asked_directly.iter().enumerate() {
        assert_eq!(&through_serve[&(i as u64)], want, "case {i} through the host's openai backend");
    }
    // And without a system message the backend asked directly answers as the host run did.
    let plain = direct_answers(&cases, &checkpoint, max_new, None);
    for (i, want) in plain.iter().enumerate() {
        assert_eq!(&direct[&(i as u64)], want, "case {i}: the in-process call and the host run differ");
    }
}

#[test]
fn serve_wants_its_bearer_key_and_fetches_no_remote_image() {
    let tmp = tempdir();
    let checkpoint = fixtures().join("checkpoints/llava_hf");
    let model = json!({"model": {"arch": "llava_hf", "checkpoint": checkpoint, "generation": {"max_new_tokens": 2}}});
    let model_file = write_manifest(&tmp.path().join("serve.toml"), &model);
    let key = "vlsbench-serve-test-key";
    let serving = Serving::start(
        &model_file,
        &["--api-key-env", "VLSBENCH_SERVE_KEY"],
        &[("VLSBENCH_SERVE_KEY", key)],
        tmp.path(),
    );
    let client = reqwest::blocking::Client::new();
    let models = format!("{}/models", serving.base_url);
    assert_eq!(client.get(&models).send().unwrap().status(), 401);
    assert_eq!(client.get(&models).bearer_auth("wrong").send().unwrap().status(), 401);
    assert_eq!(client.get(&models).bearer_auth(key).send().unwrap().status(), 200);
    let remote_image = json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "http://example.invalid/a.png"}},
    ]}]});
    let reply = client
        .post(format!("{}/chat/completions", serving.base_url))
        .bearer_auth(key)
        .json(&remote_image)
        .send()
        .unwrap();
    assert_eq!(reply.status(), 400);
    let body: Value = reply.json().unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("only data: URLs"), "{body}");
    let streaming = json!({"stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let reply =
        client.post(format!("{}/chat/completions", serving.base_url)).bearer_auth(key).json(&streaming).send().unwrap();
    assert_eq!(reply.status(), 400);
    assert!(!serving.log().contains(key), "the key reached the log");
}
