//! What every backend's parity tests share (tests only; hidden from the docs): the fixtures
//! folder and its goldens, a request in a message layout, a PNG that claims any size, a scratch
//! folder, a checkpoint with a file left out, and [`Parity`], the first-step logits and greedy tokens table checked against the
//! goldens. These helpers panic on a broken fixture: that is a failed test.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use vlsbench_plugin_api::{GenerateRequest, GenerationSettings, MessageLayout};

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
