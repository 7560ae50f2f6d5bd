//! What every backend's parity tests share (tests only; hidden from the docs): the fixtures
//! folder and its goldens, a request in a message layout, a PNG that claims any size, a scratch
//! folder, a checkpoint with a file left out, and [`Parity`], the first-step logits and greedy tokens table checked against the
//! goldens. Then the checks every [`GreedyBackend`] runs against its goldens the same way (greedy
//! runs in f32 and half precision, the golden left-padded batch, batching against one request at
//! a time, EOS, the reference harness's `generate`, the load errors). These helpers panic on a
//! broken fixture: that is a failed test.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use candle_core::DType;
use serde_json::Value;
use vlsbench_plugin_api::{
    Backend, BackendConfig, ErrorKind, GenerateRequest, Generation, GenerationSettings, MessageLayout,
};

use crate::batch::{GreedyBackend, ImageOf};
use crate::greedy::GreedyModel;

/// The repository's `tests/fixtures` folder.
pub fn fixtures() -> PathBuf {
    crate::fixtures_dir()
}

/// `tests/fixtures/golden/<checkpoint>/golden.json`.
pub fn golden(checkpoint: &str) -> Value {
    let path = fixtures().join("golden").join(checkpoint).join("golden.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// A golden list of ids (`input_ids`, `greedy_tokens`).
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// The largest |a - b| of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// A greedy request (`temperature` 0, `top_p` 1) for `prompt` and `image`, its messages in
/// `layout` as the host sends them.
pub fn request(id: &str, prompt: &str, image: &Path, max_new: u32, layout: &MessageLayout) -> GenerateRequest {
    GenerateRequest {
        id: id.into(),
        messages: layout.messages(prompt, image),
        settings: GenerationSettings { max_new_tokens: Some(max_new), temperature: Some(0.0), top_p: Some(1.0) },
        response_format: None,
    }
}

/// A PNG whose header claims `w` x `h` pixels (the data is a 1x1 image's: only the header is read
/// before an over-large image is refused).
pub fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    image::RgbImage::new(1, 1).write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    // IHDR: 8-byte signature, 4-byte length, "IHDR", width, height, ...; CRC over type + data.
    bytes[16..20].copy_from_slice(&w.to_be_bytes());
    bytes[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&bytes[12..29]);
    bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    bytes
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// A scratch folder for this test process, `<tmp>/<name>-test-<pid>`.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("{name}-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `to` (created) holding a copy of every file of the checkpoint folder `from` but `missing`.
pub fn checkpoint_without(from: &Path, to: &Path, missing: &str) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap().path();
        if f.file_name().unwrap() != missing {
            std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
        }
    }
}

/// First-step logits and greedy tokens against a checkpoint's goldens, as a table: the largest
/// |Δlogit| must stay within the tolerance (1e-4 for an f32 run) and every token sequence be equal.
pub struct Parity {
    checkpoint: String,
    title: String,
    tolerance: f32,
    table: String,
    worst: f32,
    all_equal: bool,
}

impl Parity {
    /// An f32 run against the goldens: logits within 1e-4.
    pub fn new(checkpoint: &str) -> Self {
        Self::with_tolerance(checkpoint, "f32", 1e-4)
    }

    /// A run in `dtype` (its weights rounded to it) against the f32 goldens: logits within
    /// `tolerance`, tokens equal up to the first golden step whose top-1/top-2 margin is below
    /// `tolerance` (a near-tie the dtype's own rounding can flip: [`Parity::record_case`]).
    pub fn with_tolerance(checkpoint: &str, dtype: &str, tolerance: f32) -> Self {
        let table = "image          prompt     max|dlogit|   tokens equal\n".to_owned();
        Self {
            checkpoint: checkpoint.to_owned(),
            title: format!("{checkpoint} ({dtype}, logits within {tolerance:e})"),
            tolerance,
            table,
            worst: 0.0,
            all_equal: true,
        }
    }

    /// The largest |Δlogit| recorded so far.
    pub fn worst(&self) -> f32 {
        self.worst
    }

    /// One row: `label` is (image, prompt id), `logits_npy` the golden logits' file in the
    /// checkpoint's golden folder, `want` the golden tokens.
    pub fn record(&mut self, label: (&str, &str), logits_npy: &str, logits: &[f32], tokens: &[u32], want: &[u32]) {
        let path = fixtures().join("golden").join(&self.checkpoint).join(logits_npy);
        let d = max_abs_diff(logits, &crate::npy::read_f32(&path).unwrap().data);
        self.worst = self.worst.max(d);
        let equal = tokens == want;
        self.all_equal &= equal;
        self.table += &format!("{:<14} {:<10} {d:<13.3e} {equal}\n", label.0.trim_start_matches("images/"), label.1);
    }

    /// [`Parity::record`] for a golden case (its `image`, `prompt_id`, `first_step_logits.npy`
    /// and `greedy_tokens`). Beyond f32's tolerance (a half-precision run), the tokens may part
    /// from the golden ones only after a golden step whose top-1/top-2 margin (`greedy_margins`)
    /// is below the tolerance: there the golden run itself was a near-tie that rounding the
    /// weights can flip. Such a row shows `tie@<step>`.
    pub fn record_case(&mut self, case: &Value, logits: &[f32], tokens: &[u32]) {
        let label = (case["image"].as_str().unwrap(), case["prompt_id"].as_str().unwrap());
        let npy = case["first_step_logits"]["npy"].as_str().unwrap();
        let want = ids(&case["greedy_tokens"]);
        let first_diff = tokens.iter().zip(&want).position(|(a, b)| a != b);
        let tie = case["greedy_margins"].as_array().and_then(|m| {
            let step = first_diff?;
            m.iter().take(step + 1).position(|x| x.as_f64().is_some_and(|x| (x as f32) < self.tolerance))
        });
        match tie {
            Some(step) if self.tolerance > 1e-4 && tokens.len() == want.len() => {
                let path = fixtures().join("golden").join(&self.checkpoint).join(npy);
                let d = max_abs_diff(logits, &crate::npy::read_f32(&path).unwrap().data);
                self.worst = self.worst.max(d);
                let row =
                    format!("{:<14} {:<10} {d:<13.3e} tie@{step}\n", label.0.trim_start_matches("images/"), label.1);
                self.table += &row;
            }
            _ => self.record(label, npy, logits, tokens, &want),
        }
    }

    /// Prints the table; panics when a logit is off by more than the tolerance or a token sequence
    /// differs.
    pub fn check(self) {
        println!("{}: worst {:.3e}\n{}", self.title, self.worst, self.table);
        assert!(self.worst <= self.tolerance, "{}\n{}", self.title, self.table);
        assert!(self.all_equal, "{}\n{}", self.title, self.table);
    }
}

/// The backend config of the fixture checkpoint `checkpoints/<checkpoint>`, served as `arch`, on
/// the default device and dtype, without options.
pub fn fixture_config(arch: &str, checkpoint: &str) -> BackendConfig {
    BackendConfig {
        arch: arch.into(),
        checkpoint: Some(format!("checkpoints/{checkpoint}")),
        device: None,
        dtype: None,
        options: Value::Null,
        base_dir: fixtures(),
    }
}

/// A golden case's greedy request (its `prompt` and `image`, id "0") for `max_new` tokens.
pub fn case_request(case: &Value, max_new: u32, layout: &MessageLayout) -> GenerateRequest {
    let image = fixtures().join(case["image"].as_str().unwrap());
    request("0", case["prompt"].as_str().unwrap(), &image, max_new, layout)
}

/// A golden file's `cases`.
pub fn cases(golden: &Value) -> &[Value] {
    golden["cases"].as_array().unwrap()
}

/// Pixel values against a golden case's `pixel_values`: their sum within `sum_tolerance` of the
/// golden stats, and, where the case has its `.npy`, each value within 1/255 before
/// normalisation (|Δ| times the std of its channel, `channel(i)` for the value at `i`). The
/// largest such difference for a table, or that there was no `.npy`.
pub fn check_pixel_values(
    what: &str,
    checkpoint: &str,
    golden: &Value,
    values: &[f32],
    sum_tolerance: f64,
    std: [f64; 3],
    channel: impl Fn(usize) -> usize,
) -> String {
    let sum: f64 = values.iter().map(|&x| x as f64).sum();
    let want_sum = golden["stats"]["sum"].as_f64().unwrap();
    assert!((sum - want_sum).abs() < sum_tolerance, "{what}: pixel sum {sum} vs {}", golden["stats"]["sum"]);
    let Some(npy_name) = golden["npy"].as_str() else {
        return "stats only (no .npy)".to_owned();
    };
    let want = crate::npy::read_f32(&fixtures().join("golden").join(checkpoint).join(npy_name)).unwrap();
    let d = values
        .iter()
        .zip(&want.data)
        .enumerate()
        .map(|(i, (a, b))| (a - b).abs() * std[channel(i)] as f32)
        .fold(0f32, f32::max);
    assert!(d <= 1.0 / 255.0, "{what}: pixel values differ by {d} before normalisation");
    format!("{d:.3e}")
}

/// An RGB image (`height` x `width`, uint8, row-major) equal byte for byte to the golden `.npy`
/// `npy_name` of `checkpoint`; `differs` says what a difference means.
pub fn check_golden_rgb(
    what: &str,
    checkpoint: &str,
    npy_name: &str,
    (height, width): (usize, usize),
    data: &[u8],
    differs: &str,
) {
    let want = crate::npy::read_u8(&fixtures().join("golden").join(checkpoint).join(npy_name)).unwrap();
    assert_eq!(want.shape, vec![height, width, 3], "{what}: image size");
    assert!(want.data == data, "{what}: {differs}");
}

/// Images a request may fail on, in the scratch folder `scratch` ([`temp_dir`]): a corrupt PNG
/// (`corrupt.png`), an absent file (`absent.png`) and a PNG claiming 60000x60000 pixels
/// (`huge.png`).
pub fn bad_images(scratch: &str) -> [PathBuf; 3] {
    let dir = temp_dir(scratch);
    let corrupt = dir.join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG not really").unwrap();
    let huge = dir.join("huge.png");
    std::fs::write(&huge, png_claiming(60_000, 60_000)).unwrap();
    [corrupt, dir.join("absent.png"), huge]
}

/// A [`GreedyBackend`] of the fixtures, served as `arch` (`Backend::create`), in the message
/// layout it declares for it.
pub struct Fixture<B> {
    pub arch: &'static str,
    pub layout: MessageLayout,
    _backend: std::marker::PhantomData<B>,
}

impl<B: Backend + GreedyBackend> Fixture<B> {
    pub fn new(arch: &'static str) -> Self {
        Self { arch, layout: B::describe().message_layout(arch), _backend: std::marker::PhantomData }
    }

    /// [`fixture_config`] for this arch.
    pub fn config(&self, checkpoint: &str) -> BackendConfig {
        fixture_config(self.arch, checkpoint)
    }

    /// The backend of a fixture checkpoint with its defaults.
    pub fn load(&self, checkpoint: &str) -> B {
        B::create(self.config(checkpoint)).unwrap()
    }

    /// [`case_request`] in this backend's layout.
    pub fn case_request(&self, case: &Value, max_new: u32) -> GenerateRequest {
        case_request(case, max_new, &self.layout)
    }

    /// Every golden case of every checkpoint, each with one image: the rendered prompt and the
    /// input ids as the goldens have them, then `check` (backend, checkpoint, case, `what` naming
    /// the case, the ids, the image) checks the rest and returns the case's last columns in the
    /// printed table, whose header they follow `header`.
    pub fn golden_cases_are_prepared_as_the_processor_does(
        &self,
        checkpoints: &[&str],
        header: &str,
        mut check: impl FnMut(&B, &str, &Value, &str, &[u32], ImageOf<B>) -> String,
    ) {
        for &checkpoint in checkpoints {
            let b = self.load(checkpoint);
            let mut table = format!("{checkpoint}:\nimage          prompt     {header}\n");
            for case in cases(&golden(checkpoint)) {
                let image = case["image"].as_str().unwrap();
                let what = format!("{checkpoint} {image} {}", case["prompt_id"]);
                let req = self.case_request(case, 24);
                let rendered = b.rendered_prompt(&req.messages).unwrap();
                assert_eq!(rendered, case["rendered_prompt"].as_str().unwrap(), "{what}");
                let (got_ids, images) = b.prepare(&req).unwrap();
                assert_eq!(got_ids, ids(&case["input_ids"]), "{what}: input ids");
                let Ok([img]) = <[ImageOf<B>; 1]>::try_from(images) else { panic!("{what}: not one image") };
                let row = check(&b, checkpoint, case, &what, &got_ids, img);
                let prompt = case["prompt_id"].as_str().unwrap();
                table += &format!("{:<14} {prompt:<10} {row}\n", image.trim_start_matches("images/"));
            }
            println!("{table}");
        }
    }

    /// Every golden case of `checkpoint`: the request through `b.prepare`, then 24 pure-argmax
    /// steps with no EOS stop from the golden input ids, recorded in `parity`.
    pub fn record_greedy_cases(&self, b: &B, checkpoint: &str, parity: &mut Parity) {
        for case in cases(&golden(checkpoint)) {
            let (_, images) = b.prepare(&self.case_request(case, 24)).unwrap();
            let refs: Vec<&ImageOf<B>> = images.iter().collect();
            let (logits, tokens) = b.model().greedy(&ids(&case["input_ids"]), &refs, 24, &[]).unwrap();
            parity.record_case(case, &logits.to_vec1::<f32>().unwrap(), &tokens);
        }
    }

    /// First-step logits and 24 greedy tokens of every golden case of every checkpoint, in f32.
    pub fn greedy_runs_match_goldens(&self, checkpoints: &[&str]) {
        for &checkpoint in checkpoints {
            let b = self.load(checkpoint);
            let mut parity = Parity::new(checkpoint);
            self.record_greedy_cases(&b, checkpoint, &mut parity);
            parity.check();
        }
    }

    /// [`Fixture::greedy_runs_match_goldens`] with the weights in each half dtype, its logits
    /// within its tolerance ([`Parity::with_tolerance`]); `dtype_of` is the model's run dtype.
    pub fn half_precision_runs_match_goldens(
        &self,
        checkpoints: &[&str],
        tolerances: &[(&str, f32)],
        dtype_of: impl Fn(&B) -> DType,
    ) {
        for &(dtype, tolerance) in tolerances {
            for &checkpoint in checkpoints {
                let mut cfg = self.config(checkpoint);
                cfg.dtype = Some(dtype.into());
                let b = B::create(cfg).unwrap();
                assert_eq!(dtype_of(&b), crate::request::parse_dtype(Some(dtype)).unwrap());
                let mut parity = Parity::with_tolerance(checkpoint, dtype, tolerance);
                self.record_greedy_cases(&b, checkpoint, &mut parity);
                parity.check();
            }
        }
    }

    /// The golden left-padded batch of every checkpoint: each row's case prepared alone (its ids
    /// the row's without padding), made a prompt and given to `check_row` (backend, checkpoint,
    /// row, its padding, images, prompt); the rows padded as transformers padded them; then the
    /// batch's first-step logits and 24 greedy tokens against the rows' goldens.
    pub fn golden_batches_match(
        &self,
        checkpoints: &[&str],
        mut check_row: impl FnMut(&B, &str, &Value, usize, &[ImageOf<B>], &<B::Model as GreedyModel>::Prompt),
    ) {
        for &checkpoint in checkpoints {
            let b = self.load(checkpoint);
            let g = golden(checkpoint);
            let rows = g["batch"]["rows"].as_array().unwrap();
            let mut prompts = Vec::new();
            let mut lengths = Vec::new();
            for row in rows {
                // The row's prompt text is its case's (same image and prompt id).
                let case = cases(&g)
                    .iter()
                    .find(|c| c["image"] == row["image"] && c["prompt_id"] == row["prompt_id"])
                    .unwrap();
                let (got_ids, images) = b.prepare(&self.case_request(case, 24)).unwrap();
                let pad = row["num_pad"].as_u64().unwrap() as usize;
                assert_eq!(got_ids, ids(&row["input_ids"])[pad..].to_vec(), "{checkpoint}: unpadded ids");
                let refs: Vec<&ImageOf<B>> = images.iter().collect();
                let p = b.model().prompt(&got_ids, &refs).unwrap();
                check_row(&b, checkpoint, row, pad, &images, &p);
                prompts.push(p);
                lengths.push(got_ids.len());
            }
            let longest = lengths.iter().copied().max().unwrap();
            for (len, row) in lengths.iter().zip(rows) {
                assert_eq!((longest - len) as u64, row["num_pad"].as_u64().unwrap());
            }
            let (first, tokens) = b.model().greedy_prompts(&prompts, &vec![24; rows.len()], &[], 1.0).unwrap();
            let first: Vec<Vec<f32>> = first.to_vec2().unwrap();
            let mut parity = Parity::new(checkpoint);
            for ((row, logits), toks) in rows.iter().zip(&first).zip(&tokens) {
                let label = (row["image"].as_str().unwrap(), "batch");
                let npy_name = row["first_step_logits"]["npy"].as_str().unwrap();
                parity.record(label, npy_name, logits, toks, &ids(&row["greedy_tokens"]));
            }
            parity.check();
        }
    }

    /// Every golden case of `checkpoint` as a request with id its index and a budget of 8, 16 and
    /// 24 tokens in turn.
    pub fn golden_requests(&self, checkpoint: &str) -> Vec<GenerateRequest> {
        cases(&golden(checkpoint))
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut r = self.case_request(c, 8 + (i as u32 % 3) * 8);
                r.id = i.to_string();
                r
            })
            .collect()
    }

    /// "What is this?" about `good_image` answers as it does alone, in one call with requests
    /// that each fail alone with a `bad_request` naming its item and each of its words: a corrupt,
    /// an absent and a huge image ([`bad_images`]: their names; the huge one's size), a prompt of
    /// `long_words` words past the context (`context` and the image's name), and `more`.
    pub fn bad_items_fail_alone(
        &self,
        b: &B,
        good_image: &Path,
        long_words: usize,
        more: Vec<(GenerateRequest, Vec<&str>)>,
    ) {
        let ask = |id: &str, prompt: &str, image: &Path| request(id, prompt, image, 4, &self.layout);
        let good = ask("1", "What is this?", good_image);
        let [corrupt, absent, huge] = bad_images(&B::describe().name);
        let good_name = good_image.file_name().unwrap().to_str().unwrap();
        let mut bad = vec![
            (ask("2", "What is this?", &corrupt), vec!["corrupt.png"]),
            (ask("3", "What is this?", &absent), vec!["absent.png"]),
            (ask("4", "What is this?", &huge), vec!["60000x60000", "huge.png"]),
            (ask("5", &"word ".repeat(long_words), good_image), vec!["context", good_name]),
        ];
        bad.extend(more);
        let mut requests = vec![good.clone()];
        requests.extend(bad.iter().map(|(r, _)| r.clone()));
        let out = b.generate(requests);
        assert_eq!(out[0].as_ref().unwrap(), &b.generate_one(&good).unwrap());
        for ((req, words), got) in bad.iter().zip(&out[1..]) {
            let e = got.as_ref().unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest, "{e}");
            assert!(e.message.contains(&format!("item {}", req.id)), "{e}");
            for w in words {
                assert!(e.message.contains(w), "{e}");
            }
        }
    }

    /// `requests` generated as one call answer as each does alone.
    pub fn batch_answers_like_one_request_at_a_time(b: &B, requests: Vec<GenerateRequest>) {
        let batched = b.generate(requests.clone());
        assert_eq!(batched.len(), requests.len());
        for (req, got) in requests.iter().zip(batched) {
            assert_eq!(got.unwrap(), b.generate_one(req).unwrap(), "item {} batched vs alone", req.id);
        }
    }

    /// With a copy of `checkpoint` whose generation_config.json makes the fifth greedy token of
    /// its first golden case an EOS (and the backend `options`), that case stops there with the
    /// EOS left out of its answer, and a batch where that row stops early and the others run on
    /// answers as each does alone.
    pub fn generation_stops_at_the_first_eos(&self, checkpoint: &str, options: Value) {
        // The fixtures' greedy runs may never reach their EOS; stop at a token they do produce.
        let g = golden(checkpoint);
        let cases = cases(&g);
        let tokens = ids(&cases[0]["greedy_tokens"]);
        let stop = tokens[4];
        let at = tokens.iter().position(|&t| t == stop).unwrap();
        let dir = temp_dir(&B::describe().name).join(format!("{checkpoint}-eos-{stop}"));
        checkpoint_without(&fixtures().join("checkpoints").join(checkpoint), &dir, "generation_config.json");
        let from = fixtures().join("checkpoints").join(checkpoint).join("generation_config.json");
        let mut generation: Value = serde_json::from_str(&std::fs::read_to_string(from).unwrap()).unwrap();
        generation["eos_token_id"] = serde_json::json!([stop]);
        std::fs::write(dir.join("generation_config.json"), generation.to_string()).unwrap();
        let mut cfg = self.config(checkpoint);
        cfg.checkpoint = Some(dir.display().to_string());
        cfg.options = options;
        let b = B::create(cfg).unwrap();
        assert_eq!(b.eos(), [stop]);
        let got = b.generate_one(&self.case_request(&cases[0], 24)).unwrap();
        assert_eq!(got.finish_reason.as_deref(), Some("stop"));
        assert_eq!(got.tokens, Some(at as u32 + 1));
        assert_eq!(got.text, crate::tokenizer::python_strip(&b.decode(&tokens[..at]).unwrap()));
        let reqs: Vec<GenerateRequest> = cases.iter().step_by(4).map(|c| self.case_request(c, 24)).collect();
        Self::batch_answers_like_one_request_at_a_time(&b, reqs);
    }

    /// What the reference harness records (`reference_generate`: transformers' `generate` with
    /// the checkpoint's generation_config.json, 24 new tokens): the backend with its defaults
    /// must give the same tokens and the same answer for every golden case of every checkpoint;
    /// `check` (backend, golden, case, answer) adds the arch's own checks.
    pub fn answers_equal_the_reference_harnesss_generate(
        &self,
        checkpoints: &[&str],
        mut check: impl FnMut(&B, &Value, &Value, &Generation),
    ) {
        let mut table = String::from("checkpoint          image          prompt     tokens equal  answer equal\n");
        let mut all = true;
        for &checkpoint in checkpoints {
            let b = self.load(checkpoint);
            let g = golden(checkpoint);
            for case in cases(&g) {
                let reference = &case["reference_generate"];
                let (input_ids, images) = b.prepare(&self.case_request(case, 24)).unwrap();
                assert_eq!(input_ids, ids(&case["input_ids"]), "{checkpoint} {}: input ids", case["image"]);
                let refs: Vec<&ImageOf<B>> = images.iter().collect();
                let prompt = b.model().prompt(&input_ids, &refs).unwrap();
                let tokens =
                    b.model().greedy_batch(&[prompt], &[24], b.eos(), b.repetition_penalty()).unwrap().remove(0);
                let got = b.generate_one(&self.case_request(case, 24)).unwrap();
                check(&b, &g, case, &got);
                let tokens_equal = tokens == ids(&reference["tokens"]);
                let answer_equal = got.text == reference["answer"].as_str().unwrap();
                all &= tokens_equal && answer_equal;
                let image = case["image"].as_str().unwrap().trim_start_matches("images/");
                table += &format!(
                    "{checkpoint:<19} {image:<14} {:<10} {tokens_equal:<13} {answer_equal}\n",
                    case["prompt_id"].as_str().unwrap()
                );
            }
        }
        println!("{table}");
        assert!(all, "{table}");
    }

    /// The load errors every backend names: an arch it does not serve (`other_arch`), dtype
    /// f64, a checkpoint of another model (`other_checkpoint`: config.json and the `model_type`
    /// wanted are named), and a copy of `checkpoint` missing each of `missing` (the file, what
    /// the error names).
    pub fn bad_configurations_are_named_at_load(
        &self,
        checkpoint: &str,
        other_arch: &str,
        other_checkpoint: &str,
        model_type: &str,
        missing: &[(&str, &str)],
    ) {
        let mut cfg = self.config(checkpoint);
        cfg.arch = other_arch.into();
        assert_eq!(B::create(cfg).err().unwrap().kind, ErrorKind::Unsupported);
        let mut cfg = self.config(checkpoint);
        cfg.dtype = Some("f64".into());
        let e = B::create(cfg).err().unwrap();
        assert!(e.message.contains("f64") && e.message.contains("bf16"), "{e}");
        let mut cfg = self.config(checkpoint);
        cfg.checkpoint = Some(format!("checkpoints/{other_checkpoint}"));
        let e = B::create(cfg).err().unwrap();
        assert_eq!(e.kind, ErrorKind::BadConfig);
        assert!(e.message.contains("config.json") && e.message.contains(model_type), "{e}");
        // A checkpoint missing a piece names it.
        for &(file, named) in missing {
            let dir = temp_dir(&B::describe().name).join(format!("no-{file}"));
            checkpoint_without(&fixtures().join("checkpoints").join(checkpoint), &dir, file);
            let mut cfg = self.config(checkpoint);
            cfg.checkpoint = Some(dir.display().to_string());
            let e = B::create(cfg).err().unwrap();
            assert_eq!(e.kind, ErrorKind::BadConfig, "{e}");
            assert!(e.message.contains(named), "{file}: {e}");
        }
    }

    /// `describe` names the backend `name`, serves only this arch, decodes 8 at a time, takes a
    /// checkpoint folder and declares [image, text] user messages.
    pub fn declares_image_then_text(&self, name: &str) {
        let info = B::describe();
        assert_eq!(info.name, name);
        assert_eq!(info.archs, vec![self.arch.to_owned()]);
        assert_eq!(info.max_batch, 8);
        assert!(info.checkpoint_is_path);
        assert_eq!(self.layout, MessageLayout::image_then_text());
    }

    /// The real checkpoint's chat template (a `{"chat_template": ...}` file under the shared
    /// checkpoints folder, skipped when absent) with `specials` renders every golden case of
    /// `checkpoint` as the golden prompt.
    pub fn real_chat_template_renders_the_fixture_prompts(
        &self,
        template_file: &str,
        specials: serde_json::Map<String, Value>,
        checkpoint: &str,
    ) {
        let p = fixtures().join("../../../shared/checkpoints").join(template_file);
        if !p.is_file() {
            println!("SKIPPED: {} absent", p.display());
            return;
        }
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let t = crate::template::ChatTemplate::new(v["chat_template"].as_str().unwrap(), specials).unwrap();
        for case in cases(&golden(checkpoint)) {
            let req = self.case_request(case, 1);
            assert_eq!(t.render(&req.messages).unwrap(), case["rendered_prompt"].as_str().unwrap());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_size_is_what_the_decoder_reads() {
        let png = png_claiming(60_000, 70_000);
        let dims = image::ImageReader::new(std::io::Cursor::new(png)).with_guessed_format().unwrap().into_dimensions();
        assert_eq!(dims.unwrap(), (60_000, 70_000));
    }
}
