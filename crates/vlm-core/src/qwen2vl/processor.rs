//! The image as the reference prepares it for Qwen2-VL, in two hands:
//!
//! 1. `qwen_vl_utils.process_vision_info` (`fetch_image`): the file opened with `to_rgb` (RGBA
//!    composited onto white, [`ImageLoader::CompositeRgbaOnWhite`]), [`smart_resize`]d with
//!    factor 28 and 4·28² ..= 16384·28² pixels, and resized with Pillow's default filter
//!    (bicubic, [`resize_bicubic`]).
//! 2. transformers' `Qwen2VLImageProcessor`: its own `smart_resize` with the checkpoint's pixel
//!    bounds (which leaves a qwen_vl_utils-sized image as it is when the bounds agree, as they do
//!    for the real checkpoint), rescale by 1/255, normalise with the processor's mean and std, then
//!    [`patchify`]: the frame repeated `temporal_patch_size` times and cut into rows of
//!    channel x temporal x patch x patch values, in the 2x2 merge-block order `_preprocess` uses.
//!
//! The processor's text side: each `<|image_pad|>` becomes t·h·w / merge² copies.

use std::path::Path;

use crate::image::{ImageError, ImageLoader, Rgb8, to_chw_f32};
use crate::resize::resize_bicubic;

use super::config::ImageProcessorConfig;

/// `qwen_vl_utils`' constants.
pub const IMAGE_FACTOR: usize = 28;
pub const MIN_PIXELS: u64 = 4 * 28 * 28;
pub const MAX_PIXELS: u64 = 16384 * 28 * 28;
pub const MAX_RATIO: f64 = 200.0;

/// Which `smart_resize`: `qwen_vl_utils`' keeps each side at least `factor` (`max(factor,
/// round_by_factor(...))`); transformers' does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    QwenVlUtils,
    Transformers,
}

/// Python's `round(x / factor) * factor` (round half to even).
fn round_by_factor(x: f64, factor: usize) -> usize {
    ((x / factor as f64).round_ties_even() as usize) * factor
}
fn ceil_by_factor(x: f64, factor: usize) -> usize {
    ((x / factor as f64).ceil() as usize) * factor
}
fn floor_by_factor(x: f64, factor: usize) -> usize {
    ((x / factor as f64).floor() as usize) * factor
}

/// `smart_resize(height, width, factor, min_pixels, max_pixels)` as `qwen_vl_utils` (or
/// transformers) writes it: both sides multiples of `factor`, the pixel count within the bounds,
/// the aspect ratio kept as well as that allows. Returns (height, width), or the reason as a
/// message (an aspect ratio over 200, or bounds that leave a side empty).
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: u64,
    max_pixels: u64,
    flavor: Flavor,
) -> Result<(usize, usize), String> {
    if height == 0 || width == 0 {
        return Err("the image is empty".into());
    }
    let (h, w) = (height as f64, width as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > MAX_RATIO {
        return Err(format!("absolute aspect ratio must be smaller than {MAX_RATIO}, got {ratio}"));
    }
    let floor_at = match flavor {
        Flavor::QwenVlUtils => factor,
        Flavor::Transformers => 0,
    };
    let mut h_bar = round_by_factor(h, factor).max(floor_at);
    let mut w_bar = round_by_factor(w, factor).max(floor_at);
    let pixels = (height as u64) * (width as u64);
    if (h_bar as u64) * (w_bar as u64) > max_pixels {
        let beta = (pixels as f64 / max_pixels as f64).sqrt();
        h_bar = floor_by_factor(h / beta, factor);
        w_bar = floor_by_factor(w / beta, factor);
    } else if ((h_bar as u64) * (w_bar as u64)) < min_pixels {
        let beta = (min_pixels as f64 / pixels as f64).sqrt();
        h_bar = ceil_by_factor(h * beta, factor);
        w_bar = ceil_by_factor(w * beta, factor);
    }
    if h_bar == 0 || w_bar == 0 {
        return Err(format!("resizing to {min_pixels}..={max_pixels} pixels leaves {h_bar}x{w_bar}"));
    }
    Ok((h_bar, w_bar))
}

/// One image ready for the vision tower.
#[derive(Debug, Clone)]
pub struct ProcessedImage {
    /// The image after `qwen_vl_utils` (and the processor's resize, when it changes anything).
    pub resized: Rgb8,
    /// (grid_t * grid_h * grid_w) rows of `patch_dim` values, row-major.
    pub patches: Vec<f32>,
    /// `image_grid_thw`: (t, h, w) in patches.
    pub grid: [usize; 3],
}

impl ProcessedImage {
    /// The number of `<|image_pad|>` tokens: t·h·w / merge².
    pub fn num_tokens(&self, merge_size: usize) -> usize {
        self.grid.iter().product::<usize>() / (merge_size * merge_size)
    }
}

/// Why an image could not be prepared; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Image(#[from] ImageError),
}

fn geometry(path: &Path, img: &Rgb8, message: String) -> ProcessError {
    ProcessError::Image(ImageError::Geometry {
        path: path.display().to_string(),
        width: img.width,
        height: img.height,
        message,
    })
}

/// `fetch_image` of `qwen_vl_utils`: the image opened with `to_rgb` and resized.
pub fn fetch_image(path: &Path) -> Result<Rgb8, ProcessError> {
    let img = ImageLoader::CompositeRgbaOnWhite.open(path)?;
    let (h, w) = smart_resize(img.height, img.width, IMAGE_FACTOR, MIN_PIXELS, MAX_PIXELS, Flavor::QwenVlUtils)
        .map_err(|m| geometry(path, &img, m))?;
    Ok(resize_bicubic(&img, w, h))
}

/// `process_vision_info` then `Qwen2VLImageProcessor` for one image file.
pub fn preprocess(path: &Path, cfg: &ImageProcessorConfig) -> Result<ProcessedImage, ProcessError> {
    let fetched = fetch_image(path)?;
    process_fetched(fetched, cfg).map_err(|(img, m)| geometry(path, &img, m))
}

/// `Qwen2VLImageProcessor._preprocess` on an image `qwen_vl_utils` has already resized.
pub fn process_fetched(img: Rgb8, cfg: &ImageProcessorConfig) -> Result<ProcessedImage, (Rgb8, String)> {
    let factor = cfg.patch_size * cfg.merge_size;
    let resized = if cfg.do_resize {
        match smart_resize(img.height, img.width, factor, cfg.min_pixels, cfg.max_pixels, Flavor::Transformers) {
            Ok((h, w)) => resize_bicubic(&img, w, h),
            Err(m) => return Err((img, m)),
        }
    } else {
        img
    };
    if resized.height % factor != 0 || resized.width % factor != 0 {
        let m = format!("{}x{} is not a multiple of {factor} (do_resize is false)", resized.width, resized.height);
        return Err((resized, m));
    }
    let rescale = cfg.do_rescale.then_some(cfg.rescale_factor);
    let normalize = cfg.do_normalize.then_some((cfg.image_mean, cfg.image_std));
    let chw = to_chw_f32(&resized, rescale, normalize);
    let (patches, grid) = patchify(&chw, resized.height, resized.width, cfg);
    Ok(ProcessedImage { resized, patches, grid })
}

/// transformers' patch cutting for one frame `chw` (3, h, w): the frame repeated
/// `temporal_patch_size` times, reshaped to (t, tps, c, h/m/p, m, p, w/m/p, m, p), permuted
/// (0, 3, 6, 4, 7, 2, 1, 5, 8) and flattened to (t·gh·gw, c·tps·p·p). So consecutive rows walk a
/// 2x2 merge block, and each row holds channel, then time, then the patch's pixels row-major.
pub fn patchify(chw: &[f32], height: usize, width: usize, cfg: &ImageProcessorConfig) -> (Vec<f32>, [usize; 3]) {
    let (p, m, tps, c) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size, 3);
    let (gh, gw) = (height / p, width / p);
    let grid_t = 1; // one frame, repeated tps times: patches.size(0) // tps
    let patch_dim = c * tps * p * p;
    let mut out = Vec::with_capacity(grid_t * gh * gw * patch_dim);
    for bh in 0..gh / m {
        for bw in 0..gw / m {
            for mh in 0..m {
                for mw in 0..m {
                    let (ph0, pw0) = ((bh * m + mh) * p, (bw * m + mw) * p);
                    for ch in 0..c {
                        for _t in 0..tps {
                            for y in 0..p {
                                let row = ch * height * width + (ph0 + y) * width + pw0;
                                out.extend_from_slice(&chw[row..row + p]);
                            }
                        }
                    }
                }
            }
        }
    }
    (out, [grid_t, gh, gw])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn q(h: usize, w: usize) -> Result<(usize, usize), String> {
        smart_resize(h, w, 28, MIN_PIXELS, MAX_PIXELS, Flavor::QwenVlUtils)
    }

    #[test]
    fn smart_resize_rounds_half_to_even_like_python() {
        // 70 / 28 = 2.5 rounds to 2 (not 3): a 70 px side becomes 56, 98 (3.5) becomes 112.
        assert_eq!(q(70, 98).unwrap(), (56, 112));
        assert_eq!(q(126, 126).unwrap(), (112, 112)); // 4.5 -> 4
        assert_eq!(q(64, 64).unwrap(), (56, 56));
        assert_eq!(q(200, 90).unwrap(), (196, 84));
    }

    #[test]
    fn smart_resize_clamps_to_the_pixel_bounds() {
        // Too few pixels: scaled up by sqrt(min / (h w)), each side rounded up to 28.
        assert_eq!(q(5, 3).unwrap(), (84, 56)); // beta = sqrt(3136/15) = 14.46: 72.3 -> 84, 43.4 -> 56
        assert_eq!(q(20, 20).unwrap(), (56, 56)); // each side floors at 28 first: 28*28 < 3136
        // Too many: scaled down by sqrt(h w / max), each side rounded down to 28.
        let (h, w) = q(6000, 4000).unwrap();
        assert_eq!((h, w), (4368, 2912));
        assert!((h * w) as u64 <= MAX_PIXELS);
        // transformers' own smart_resize on an image already sized by qwen_vl_utils: unchanged.
        assert_eq!(smart_resize(4368, 2912, 28, 3136, 12845056, Flavor::Transformers).unwrap(), (4368, 2912));
    }

    #[test]
    fn an_aspect_ratio_over_200_is_refused() {
        assert!(q(10, 2000).is_ok());
        let e = q(10, 2001).unwrap_err();
        assert!(e.contains("aspect ratio") && e.contains("200"), "{e}");
    }

    #[test]
    fn an_extreme_image_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("qwen2vl-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p: PathBuf = dir.join("needle.png");
        image::RgbImage::new(402, 2).save(&p).unwrap();
        let cfg = crate::qwen2vl::config::ImageProcessorConfig::from_value(&serde_json::json!({}), Path::new("p"), "")
            .unwrap();
        let e = preprocess(&p, &cfg).unwrap_err().to_string();
        assert!(e.contains("needle.png") && e.contains("402x2") && e.contains("aspect ratio"), "{e}");
    }

    #[test]
    fn patches_follow_transformers_merge_block_order() {
        // A 1-channel-distinct 4x4 patch grid of 1-pixel patches: value = c*1000 + y*10 + x.
        let cfg = crate::qwen2vl::config::ImageProcessorConfig::from_value(
            &serde_json::json!({"patch_size": 1, "merge_size": 2, "temporal_patch_size": 2}),
            Path::new("p"),
            "",
        )
        .unwrap();
        let (h, w) = (4, 4);
        let chw: Vec<f32> = (0..3)
            .flat_map(|c| (0..h).flat_map(move |y| (0..w).map(move |x| (c * 1000 + y * 10 + x) as f32)))
            .collect();
        let (rows, grid) = patchify(&chw, h, w, &cfg);
        assert_eq!(grid, [1, 4, 4]);
        // Row order: block (0,0): (0,0) (0,1) (1,0) (1,1); block (0,1): (0,2) (0,3) (1,2) (1,3); ...
        let first_of_row: Vec<f32> = rows.chunks(6).map(|r| r[0]).collect();
        assert_eq!(first_of_row[..8], [0., 1., 10., 11., 2., 3., 12., 13.]);
        assert_eq!(first_of_row[8..12], [20., 21., 30., 31.]);
        // Within a row: channel-major, each channel's value twice (the repeated frame).
        assert_eq!(&rows[6 * 5..6 * 6], &[3., 3., 1003., 1003., 2003., 2003.]);
    }

    #[test]
    fn patches_equal_a_literal_reshape_and_permute() {
        // `_preprocess` done generically: the frames (tps, c, h, w) viewed as the 9-D shape
        // (1, tps, c, gh/m, m, p, gw/m, m, p), axes permuted (0, 3, 6, 4, 7, 2, 1, 5, 8), flattened.
        let cfg = crate::qwen2vl::config::ImageProcessorConfig::from_value(
            &serde_json::json!({"patch_size": 2}),
            Path::new("p"),
            "",
        )
        .unwrap();
        let (p, m, tps, c) = (2usize, 2usize, 2usize, 3usize);
        let (h, w) = (8usize, 12usize);
        let chw: Vec<f32> = (0..c * h * w).map(|i| i as f32).collect();
        let frames: Vec<f32> = (0..tps).flat_map(|_| chw.iter().copied()).collect();
        let (gh, gw) = (h / p, w / p);
        let shape = [1, tps, c, gh / m, m, p, gw / m, m, p];
        let mut strides = [1usize; 9];
        for i in (0..8).rev() {
            strides[i] = strides[i + 1] * shape[i + 1];
        }
        let perm = [0, 3, 6, 4, 7, 2, 1, 5, 8];
        let out_shape: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
        let total: usize = out_shape.iter().product();
        let mut want = Vec::with_capacity(total);
        for flat in 0..total {
            let (mut rest, mut src) = (flat, 0);
            for k in (0..9).rev() {
                src += (rest % out_shape[k]) * strides[perm[k]];
                rest /= out_shape[k];
            }
            want.push(frames[src]);
        }
        let (rows, grid) = patchify(&chw, h, w, &cfg);
        assert_eq!(grid, [1, gh, gw]);
        assert_eq!(rows, want);
    }
}
