//! The three pages in a real headless Chromium, driven over the DevTools protocol
//! (`headless_chrome`, which never downloads a browser): the report of a 2,241-item run, the
//! comparison of three runs and the agreement of two judges.
//!
//! The runs are made once per test binary by the real host: the 2,241 items of the real
//! `data.json` when it is on this machine (with generated placeholder images; nothing of it enters
//! the repository), else a generated 2,241-item dataset; the openai backend and the paper's judge
//! against the loopback mock server (which fails some generations on purpose, so that errors show
//! apart), then `judge --judge` with the refusal-keywords judge for a second judging of the same
//! answers. Each test writes a screenshot under `target/screenshots/`.
//!
//! The browser is `$VLSBENCH_CHROME`, else the first of google-chrome, chromium, ... on the PATH
//! (`.ci/run` installs Debian's `chromium`). Where none is found, each test says SKIPPED and why.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::protocol::cdp::Runtime::ConsoleAPICalledEventTypeOption;
use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::{Value, json};
use vlsbench_mock_openai::{MockReply, MockServer, RecordedRequest, is_judge_request, last_user_text, scripted};

use crate::support::*;

/// How many items the report's run has, as the released benchmark.
const ITEMS: usize = 2241;

/// The runs the pages are made of, built once.
struct Fixture {
    _tmp: tempfile::TempDir,
    /// The paper's judge (mock model): report.html is tested on this one.
    first: PathBuf,
    /// The same answers judged by the refusal-keywords judge.
    second: PathBuf,
    /// A copy of the first run's `openai_outputs.json`, as a reference harness would leave it.
    reference: PathBuf,
    /// Where compare.* and agreement.* are written.
    pages: PathBuf,
}

/// A placeholder image: a gradient whose colours depend on `seed`.
fn placeholder_png(seed: u32) -> Vec<u8> {
    let [a, b, c, _] = seed.wrapping_mul(2_654_435_761).to_le_bytes();
    let img = image::RgbImage::from_fn(96, 64, |x, y| {
        image::Rgb([a.wrapping_add((x * 2) as u8), b.wrapping_add((y * 3) as u8), c ^ ((x + y) as u8)])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).expect("encode png");
    out.into_inner()
}

/// The dataset root: the real annotation file with placeholder images, else 2,241 generated items.
fn dataset(root: &Path) {
    std::fs::create_dir_all(root).unwrap();
    let items: Vec<Value> = match real_data_json() {
        Some(real) => {
            // Copied into the temporary root only.
            std::fs::copy(&real, root.join("data.json")).unwrap();
            serde_json::from_str(&std::fs::read_to_string(&real).unwrap()).unwrap()
        }
        None => {
            eprintln!("the real data.json is absent: the browser tests use 2,241 generated items");
            let cats = [
                ("Violent", ["Weapons", "Terrorism", "Violent Behavior"]),
                ("Illegal Activity", ["Property Crime", "Drug", "Fraud"]),
                ("Self-Harm", ["Suicide", "Substance Use", "Risky Behavior"]),
                ("Erotic", ["Sexual Content", "Nudity", "Grooming"]),
                ("Privacy", ["Doxxing", "Surveillance", "Personal Data"]),
                ("Hate", ["Racism", "Religion", "Gender"]),
            ];
            let sources = ["generation", "MultiTrust", "coco2017", "Ch3Ef"];
            let items: Vec<Value> = (0..ITEMS as u32)
                .map(|id| {
                    let (cat, subs) = cats[id as usize % cats.len()];
                    json!({
                        "instruction_id": id,
                        "instruction": format!("What could someone do with what is shown here? (item {id})"),
                        "image_path": format!("imgs/{}.png", id / 2),
                        "category": cat,
                        "sub_category": subs[(id as usize / cats.len()) % subs.len()],
                        "source": sources[id as usize % sources.len()],
                    })
                })
                .collect();
            std::fs::write(root.join("data.json"), serde_json::to_string(&items).unwrap()).unwrap();
            items
        }
    };
    let images: BTreeSet<&str> = items.iter().map(|i| i["image_path"].as_str().unwrap()).collect();
    for (seed, rel) in images.into_iter().enumerate() {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, placeholder_png(seed as u32)).unwrap();
    }
}

/// A hash of a question, to script the mock model's answer deterministically.
fn bucket(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3)) % 100
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        for needed in [openai_backend(), vlsbench_judge(), refusal_keywords_judge()] {
            assert!(needed.is_file(), "{} is not built; run `cargo xtask build` first", needed.display());
        }
        let tmp = tempfile::Builder::new().prefix("vlsbench-browser-test-").tempdir().unwrap();
        let root = tmp.path().join("vlsbench");
        dataset(&root);
        let judge = scripted(Duration::ZERO);
        // The model refuses, warns or answers by a hash of the question; 2 in 100 generations fail
        // for good (HTTP 400), so that the report shows generation errors apart.
        let server = MockServer::start(move |req: &RecordedRequest| {
            if is_judge_request(&req.body) || !req.path.ends_with("/chat/completions") {
                return judge(req);
            }
            let q = last_user_text(&req.body).unwrap_or_default();
            match bucket(&q) {
                0..2 => MockReply::error(400, "the mock refuses this request", "invalid_request_error"),
                2..30 => MockReply::chat("I'm sorry, but I can't help with that."),
                30..60 => MockReply::chat(&format!("Please be careful and stay safe. About: {q}")),
                _ => MockReply::chat(&format!("Here is how: {q}")),
            }
        });
        let out = tmp.path().join("out");
        let mut m = openai_manifest(&root, &server.base_url(), &out, "first");
        m["run"]["concurrency"] = json!(16);
        m["run"]["max_tries"] = json!(1);
        let manifest = write_manifest(&tmp.path().join("first.toml"), &m);
        let first = out.join("first");
        let outcome = run(&manifest, &first).output();
        outcome.success();
        eprintln!("the {ITEMS}-item run took {:.1}s", outcome.elapsed.as_secs_f64());

        let other = tmp.path().join("keywords.toml");
        std::fs::write(&other, "[judge]\ncomponent = \"refusal-keywords\"\n").unwrap();
        let second = out.join("first--refusal-keywords");
        host([OsString::from("judge"), first.clone().into(), "--judge".into(), other.into()])
            .run_dir(&second)
            .output()
            .success();
        let reference = tmp.path().join("reference").join("gpt4o-reference_outputs.json");
        std::fs::create_dir_all(reference.parent().unwrap()).unwrap();
        std::fs::copy(first.join("openai_outputs.json"), &reference).unwrap();

        let pages = tmp.path().join("pages");
        let compare = Command::new(host_bin())
            .arg("compare")
            .args([&first, &second, &reference])
            .arg("--out")
            .arg(&pages)
            .output()
            .unwrap();
        assert!(compare.status.success(), "compare failed: {}", String::from_utf8_lossy(&compare.stderr));
        let agreement = Command::new(host_bin())
            .arg("agreement")
            .args([&first, &second])
            .arg("--out")
            .arg(&pages)
            .output()
            .unwrap();
        assert!(agreement.status.success(), "agreement failed: {}", String::from_utf8_lossy(&agreement.stderr));
        Fixture { _tmp: tmp, first, second, reference, pages }
    })
}

/// The shared browser, or `None` (with the reason printed) where none is installed.
fn browser() -> Option<&'static Browser> {
    static BROWSER: OnceLock<Option<Browser>> = OnceLock::new();
    BROWSER
        .get_or_init(|| {
            let path = std::env::var_os("VLSBENCH_CHROME")
                .map(PathBuf::from)
                .or_else(|| headless_chrome::browser::default_executable().ok());
            let Some(path) = path else {
                eprintln!(
                    "SKIPPED: no Chromium or Chrome found (set VLSBENCH_CHROME, or `apt-get install chromium` as \
                     .ci/run does): the report pages were not tested in a browser"
                );
                return None;
            };
            let options = LaunchOptions::default_builder()
                .path(Some(path.clone()))
                .headless(true)
                .sandbox(false)
                .enable_gpu(false)
                .window_size(Some((1280, 1400)))
                .idle_browser_timeout(Duration::from_secs(600))
                .args(vec![std::ffi::OsStr::new("--no-proxy-server"), std::ffi::OsStr::new("--hide-scrollbars")])
                .build()
                .unwrap();
            Some(
                Browser::new(options)
                    .unwrap_or_else(|e| panic!("{} is installed but does not start: {e}", path.display())),
            )
        })
        .as_ref()
}

/// A tab showing `file`, with every console error and uncaught exception collected.
struct Page {
    tab: Arc<Tab>,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Page {
    fn open(browser: &Browser, file: &Path) -> Page {
        let tab = browser.new_tab().unwrap();
        tab.set_default_timeout(Duration::from_secs(60));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        tab.enable_runtime().unwrap();
        tab.enable_log().unwrap();
        tab.add_event_listener(Arc::new(move |event: &Event| {
            let msg = match event {
                Event::RuntimeConsoleAPICalled(e)
                    if matches!(
                        e.params.Type,
                        ConsoleAPICalledEventTypeOption::Error | ConsoleAPICalledEventTypeOption::Assert
                    ) =>
                {
                    Some(format!("console.error: {:?}", e.params.args.iter().map(|a| &a.value).collect::<Vec<_>>()))
                }
                Event::RuntimeExceptionThrown(e) => Some(format!("exception: {:?}", e.params.exception_details)),
                Event::LogEntryAdded(e) if format!("{:?}", e.params.entry.level) == "Error" => {
                    Some(format!("log error: {} {:?}", e.params.entry.text, e.params.entry.url))
                }
                _ => None,
            };
            if let Some(m) = msg {
                sink.lock().unwrap().push(m);
            }
        }))
        .unwrap();
        let url = format!("file://{}", file.canonicalize().unwrap().display());
        tab.navigate_to(&url).unwrap().wait_until_navigated().unwrap();
        Page { tab, errors }
    }

    /// Evaluates `js` (an expression) and returns its value, passed through JSON.
    fn eval(&self, js: &str) -> Value {
        let expr = format!("JSON.stringify((() => {{ return {js}; }})())");
        let result = self.tab.evaluate(&expr, false).unwrap_or_else(|e| panic!("{js}: {e}"));
        let text = result.value.and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_else(|| "null".into());
        serde_json::from_str(&text).unwrap()
    }

    fn screenshot(&self, name: &str) {
        let png = self.tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true).unwrap();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
        eprintln!("screenshot: {}", dir.join(format!("{name}.png")).display());
    }

    fn assert_no_errors(&self) {
        let errors = self.errors.lock().unwrap();
        assert!(errors.is_empty(), "the page logged errors:\n{}", errors.join("\n"));
    }
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn the_report_of_a_2241_item_run_loads_without_console_errors_and_lists_every_item() {
    let Some(browser) = browser() else { return };
    let f = fixture();
    let report = f.first.join("report.html");
    let size = std::fs::metadata(&report).unwrap().len();
    eprintln!("report.html of {ITEMS} items: {:.1} MB", size as f64 / 1e6);
    assert!(size < 12_000_000, "report.html is {size} bytes");
    let page = Page::open(browser, &report);
    assert_eq!(page.eval("document.getElementById('count').dataset.n"), json!(ITEMS.to_string()));
    assert_eq!(page.eval("document.querySelectorAll('#item-table tbody tr').length"), json!(100), "first page");
    assert_eq!(page.eval("document.querySelectorAll('#item-table tbody img').length"), json!(100), "thumbnails");
    page.screenshot("report");
    // Items without a label (the mock's failed generations) are listed apart from the labels.
    let summary = read_json(&f.first.join("summary.json"));
    let gen_errors = summary["not_scored"]["generation_error"].as_array().unwrap().len();
    assert!(gen_errors > 0, "the mock fails some generations");
    let unscored = summary["overall"]["items"].as_u64().unwrap() - summary["overall"]["judged"].as_u64().unwrap();
    page.eval("(() => { const s = document.getElementById('f-label'); s.value = 'unscored'; s.dispatchEvent(new Event('change')); return 0; })()");
    assert_eq!(page.eval("document.getElementById('count').dataset.n"), json!(unscored.to_string()));
    page.assert_no_errors();
}

#[test]
fn the_report_charts_have_one_bar_per_category() {
    let Some(browser) = browser() else { return };
    let f = fixture();
    let summary = read_json(&f.first.join("summary.json"));
    let categories: Vec<&String> = summary["by_category"].as_object().unwrap().keys().collect();
    let subs = summary["by_sub_category"].as_object().unwrap().len();
    let page = Page::open(browser, &f.first.join("report.html"));
    let bars = page.eval("[...document.querySelectorAll('#chart-category g.bar')].map(g => g.dataset.group)");
    assert_eq!(bars, json!(categories));
    assert_eq!(page.eval("document.querySelectorAll('#chart-subcategory g.bar').length"), json!(subs));
    // Each bar with judged items draws the interval of its safe rate.
    assert_eq!(
        page.eval("document.querySelectorAll('#chart-category g.bar .ci-safe').length"),
        json!(categories.len())
    );
    page.eval("document.getElementById('charts').scrollIntoView()");
    page.screenshot("report-charts");
    page.assert_no_errors();
}

#[test]
fn filtering_the_report_by_unsafe_shows_exactly_the_unsafe_items_and_the_keyboard_opens_a_record() {
    let Some(browser) = browser() else { return };
    let f = fixture();
    let outputs = read_json(&f.first.join("openai_outputs.json"));
    let unsafe_ids: Vec<u64> = outputs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["safe_label"] == 3)
        .map(|l| l["id"].as_u64().unwrap())
        .collect();
    assert!(!unsafe_ids.is_empty());
    let page = Page::open(browser, &f.first.join("report.html"));
    page.eval(
        "(() => { const s = document.getElementById('f-label'); s.value = '3'; s.dispatchEvent(new Event('change'));
          const p = document.getElementById('f-page-size'); p.value = 'all'; p.dispatchEvent(new Event('change')); return 0; })()",
    );
    let rows = page.eval(
        "[...document.querySelectorAll('#item-table tbody tr')].map(tr => [Number(tr.dataset.id), tr.dataset.label])",
    );
    let rows: Vec<(u64, String)> = serde_json::from_value(rows).unwrap();
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), unsafe_ids, "the unsafe items, by id");
    assert!(rows.iter().all(|r| r.1 == "3"));
    page.eval("document.getElementById('items').scrollIntoView()");
    page.screenshot("report-unsafe");

    // Keyboard: focus the first row, move down, open the record with Enter, close it with Escape.
    page.eval("(() => { document.querySelector('#item-table tbody tr').focus(); return 0; })()");
    page.tab.press_key("ArrowDown").unwrap();
    page.tab.press_key("Enter").unwrap();
    assert_eq!(page.eval("document.getElementById('record').open"), json!(true));
    let title = format!("Item {}", unsafe_ids[1]);
    assert_eq!(page.eval("document.getElementById('record-title').textContent"), json!(title));
    assert_eq!(page.eval("document.querySelector('#record-body .badge').textContent"), json!("Unsafe"));
    page.screenshot("report-record");
    page.tab.press_key("Escape").unwrap();
    assert_eq!(page.eval("document.getElementById('record').open"), json!(false));
    // "/" focuses the search; typing an id finds that item.
    page.tab.press_key("/").unwrap();
    assert_eq!(page.eval("document.activeElement.id"), json!("f-search"));
    page.assert_no_errors();
}

#[test]
fn the_compare_page_lists_every_run() {
    let Some(browser) = browser() else { return };
    let f = fixture();
    let compare = read_json(&f.pages.join("compare.json"));
    let names: BTreeSet<String> =
        compare["runs"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_owned()).collect();
    let expected: BTreeSet<String> = [&f.first, &f.second, &f.reference]
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, expected);
    assert_eq!(compare["pairs"].as_array().unwrap().len(), 3);
    let page = Page::open(browser, &f.pages.join("compare.html"));
    let listed =
        page.eval("[...document.querySelectorAll('#leaderboard-table tr[data-run]')].map(tr => tr.dataset.run)");
    let listed: BTreeSet<String> = serde_json::from_value(listed).unwrap();
    assert_eq!(listed, expected);
    assert_eq!(page.eval("document.querySelectorAll('#pairs-table tbody tr').length"), json!(3));
    let categories = compare["categories"].as_array().unwrap().len();
    assert_eq!(page.eval("document.querySelectorAll('#chart-compare g.pt').length"), json!(3 * (1 + categories)));
    // The run and its own outputs file judged the same items the same way.
    let same = compare["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| {
            let pair: BTreeSet<&str> = [p["a"].as_str().unwrap(), p["b"].as_str().unwrap()].into();
            pair == ["first", "gpt4o-reference_outputs.json"].into()
        })
        .unwrap();
    assert_eq!(same["overall"]["difference"], json!(0.0));
    assert_eq!(same["overall"]["mcnemar_p"], json!(1.0));
    page.screenshot("compare");
    page.assert_no_errors();
}

#[test]
fn the_agreement_page_renders_the_matrix_kappa_and_every_disagreement() {
    let Some(browser) = browser() else { return };
    let f = fixture();
    let ag = read_json(&f.pages.join("agreement.json"));
    let matrix: [[usize; 3]; 3] = serde_json::from_value(ag["matrix"].clone()).unwrap();
    let both = ag["both_judged"].as_u64().unwrap() as usize;
    assert_eq!(matrix.iter().flatten().sum::<usize>(), both);
    let off: usize =
        (0..3).flat_map(|i| (0..3).map(move |j| (i, j))).filter(|(i, j)| i != j).map(|(i, j)| matrix[i][j]).sum();
    assert_eq!(ag["disagreements"].as_array().unwrap().len(), off);
    let page = Page::open(browser, &f.pages.join("agreement.html"));
    let cells = page.eval("[...document.querySelectorAll('#confusion tbody tr')].slice(0, 3).map(tr => [...tr.querySelectorAll('td')].slice(0, 3).map(td => Number(td.textContent)))");
    assert_eq!(cells, json!(matrix));
    assert_eq!(page.eval("document.querySelectorAll('#disagreement-table tbody tr').length"), json!(off));
    let kappa = page.eval("document.getElementById('kappa').textContent");
    assert!(kappa.as_str().unwrap().contains('['), "{kappa}");
    let by_cat: BTreeMap<String, Value> = serde_json::from_value(ag["by_category"].clone()).unwrap();
    assert_eq!(page.eval("document.querySelectorAll('#category-table tbody tr').length"), json!(by_cat.len()));
    page.screenshot("agreement");
    page.assert_no_errors();
}
