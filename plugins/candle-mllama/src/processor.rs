//! The image as the reference prepares it for Llama 3.2 Vision: the file opened with
//! `Image.open(path).convert("RGB")` ([`ImageLoader::DropAlpha`]), then transformers'
//! `MllamaImageProcessor` (its PIL backend, `image_processing_pil_mllama.py`):
//!
//! 1. [`optimal_tiled_canvas`]: of the tile arrangements that fit `max_image_tiles`
//!    ([`supported_aspect_ratios`], (rows, columns)), the one whose canvas needs the smallest
//!    upscale, else the smallest downscale; ties go to the smallest area.
//! 2. [`size_fit_to_canvas`]: the image resized keeping its aspect ratio to fit that canvas (no
//!    side below one tile unless the canvas allows), with the configured Pillow filter
//!    (`resample: 2`, bilinear, in the real checkpoint).
//! 3. padded with zeros at the bottom and the right to the canvas (before rescaling, so a padded
//!    pixel normalises to `-mean / std`), rescaled, normalised, cut into tiles row by row.
//! 4. `aspect_ratio_ids` (the 1-based index of (rows, columns) in the supported list; 0 is a
//!    padding image), `aspect_ratio_mask` (the first `rows·columns` tiles, tile 0 always),
//!    `num_tiles`; the model sees `max_image_tiles` tiles, the missing ones zero.
//!
//! The processor's text side, [`cross_attention_token_mask`]: which image each token attends to,
//! from the `<|image|>` positions (`get_cross_attention_token_mask` and
//! `convert_sparse_cross_attention_mask_to_dense`).

use std::path::Path;

use vlm_core::image::{ImageError, ImageLoader, Rgb8, to_chw_f32};
use vlm_core::resize::resize;

use crate::config::ImageProcessorConfig;

/// `get_all_supported_aspect_ratios(max_image_tiles)`: every (a, b) with a·b ≤ max, a-major. The
/// processor reads each pair as (tile rows, tile columns).
pub fn supported_aspect_ratios(max_image_tiles: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for a in 1..=max_image_tiles {
        for b in 1..=max_image_tiles {
            if a * b <= max_image_tiles {
                out.push((a, b));
            }
        }
    }
    out
}

/// `get_optimal_tiled_canvas`: the canvas (height, width) in pixels.
pub fn optimal_tiled_canvas(height: usize, width: usize, max_image_tiles: usize, tile: usize) -> (usize, usize) {
    let canvases: Vec<(usize, usize)> =
        supported_aspect_ratios(max_image_tiles).into_iter().map(|(h, w)| (h * tile, w * tile)).collect();
    // numpy: target / image in f64, the smaller of the two scales.
    let scales: Vec<f64> = canvases
        .iter()
        .map(|&(ch, cw)| {
            let (sh, sw) = (ch as f64 / height as f64, cw as f64 / width as f64);
            if sw > sh { sh } else { sw }
        })
        .collect();
    let up =
        scales.iter().copied().filter(|&s| s >= 1.0).fold(None, |m: Option<f64>, s| Some(m.map_or(s, |m| m.min(s))));
    let selected = up.unwrap_or_else(|| scales.iter().copied().filter(|&s| s < 1.0).fold(f64::MIN, f64::max));
    // Among the canvases of exactly that scale, the first of the smallest area (np.argmin).
    let mut best: Option<(usize, usize)> = None;
    for (&c, &s) in canvases.iter().zip(&scales) {
        if s == selected && best.is_none_or(|b| c.0 * c.1 < b.0 * b.1) {
            best = Some(c);
        }
    }
    best.unwrap_or((tile, tile))
}

/// `get_image_size_fit_to_canvas`: the resized (height, width).
pub fn size_fit_to_canvas(
    height: usize,
    width: usize,
    canvas_h: usize,
    canvas_w: usize,
    tile: usize,
) -> (usize, usize) {
    // np.clip(x, tile, canvas): max(tile) then min(canvas).
    let target_w = width.max(tile).min(canvas_w);
    let target_h = height.max(tile).min(canvas_h);
    let scale_h = target_h as f64 / height as f64;
    let scale_w = target_w as f64 / width as f64;
    if scale_w < scale_h {
        let new_h = ((height as f64 * scale_w).floor() as usize).max(1).min(target_h);
        (new_h, target_w)
    } else {
        let new_w = ((width as f64 * scale_h).floor() as usize).max(1).min(target_w);
        (target_h, new_w)
    }
}

/// One image ready for the vision encoder.
#[derive(Debug, Clone)]
pub struct ProcessedImage {
    /// The image after the resize, before padding.
    pub resized: Rgb8,
    /// The image padded to its canvas (uint8), what is rescaled and normalised.
    pub padded: Rgb8,
    /// (tile rows, tile columns).
    pub aspect_ratio: (usize, usize),
    /// `aspect_ratio_ids`: 1-based index into the supported aspect ratios.
    pub aspect_ratio_id: usize,
    /// `aspect_ratio_mask`, `max_image_tiles` long.
    pub aspect_ratio_mask: Vec<u8>,
    /// `max_image_tiles` x 3 x tile x tile values, tiles row by row; the tiles past `num_tiles`
    /// zero (as `pack_images` leaves them).
    pub pixel_values: Vec<f32>,
    pub tile_size: usize,
    pub max_tiles: usize,
}

impl ProcessedImage {
    pub fn num_tiles(&self) -> usize {
        self.aspect_ratio.0 * self.aspect_ratio.1
    }
}

/// Why an image could not be prepared; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// `load_images` of the reference (`convert("RGB")`, alpha dropped) then the processor.
pub fn preprocess(path: &Path, cfg: &ImageProcessorConfig) -> Result<ProcessedImage, ProcessError> {
    let img = ImageLoader::DropAlpha.open(path)?;
    Ok(process_rgb(img, cfg))
}

/// `MllamaImageProcessor._preprocess` for one RGB image.
pub fn process_rgb(img: Rgb8, cfg: &ImageProcessorConfig) -> ProcessedImage {
    let tile = cfg.tile_size;
    let (canvas_h, canvas_w) = optimal_tiled_canvas(img.height, img.width, cfg.max_image_tiles, tile);
    let (rows, cols) = (canvas_h / tile, canvas_w / tile);
    let (new_h, new_w) = size_fit_to_canvas(img.height, img.width, canvas_h, canvas_w, tile);
    let resized = resize(&img, new_w, new_h, cfg.resample);
    let mut padded = Rgb8 { width: canvas_w, height: canvas_h, data: vec![0; canvas_w * canvas_h * 3] };
    for y in 0..resized.height {
        let src = &resized.data[y * resized.width * 3..(y + 1) * resized.width * 3];
        padded.data[y * canvas_w * 3..y * canvas_w * 3 + src.len()].copy_from_slice(src);
    }
    let rescale = cfg.do_rescale.then_some(cfg.rescale_factor);
    let normalize = cfg.do_normalize.then_some((cfg.image_mean, cfg.image_std));
    let chw = to_chw_f32(&padded, rescale, normalize);
    let mut pixel_values = split_to_tiles(&chw, canvas_h, canvas_w, rows, cols);
    pixel_values.resize(cfg.max_image_tiles * 3 * tile * tile, 0.0);
    let supported = supported_aspect_ratios(cfg.max_image_tiles);
    let aspect_ratio_id = supported.iter().position(|&a| a == (rows, cols)).map_or(0, |i| i + 1);
    let mut aspect_ratio_mask = vec![0u8; cfg.max_image_tiles];
    aspect_ratio_mask[0] = 1;
    for m in aspect_ratio_mask.iter_mut().take(rows * cols) {
        *m = 1;
    }
    ProcessedImage {
        resized,
        padded,
        aspect_ratio: (rows, cols),
        aspect_ratio_id,
        aspect_ratio_mask,
        pixel_values,
        tile_size: tile,
        max_tiles: cfg.max_image_tiles,
    }
}

/// `split_to_tiles`: (3, rows·t, cols·t) → (rows·cols, 3, t, t), tiles row by row.
pub fn split_to_tiles(chw: &[f32], height: usize, width: usize, rows: usize, cols: usize) -> Vec<f32> {
    let (th, tw) = (height / rows, width / cols);
    let mut out = Vec::with_capacity(chw.len());
    for r in 0..rows {
        for c in 0..cols {
            for ch in 0..3 {
                for y in 0..th {
                    let start = ch * height * width + (r * th + y) * width + c * tw;
                    out.extend_from_slice(&chw[start..start + tw]);
                }
            }
        }
    }
    out
}

/// `get_cross_attention_token_mask`: each image's [start, end) token range (`end` None: to the
/// end of the sequence). An image attends from its `<|image|>` token to the next image's;
/// consecutive image tokens share the range that follows the last of them.
pub fn cross_attention_token_mask(ids: &[u32], image_token_id: u32) -> Vec<(usize, Option<usize>)> {
    let locs: Vec<usize> = ids.iter().enumerate().filter(|&(_, &t)| t == image_token_id).map(|(i, _)| i).collect();
    match locs.len() {
        0 => return vec![],
        1 => return vec![(locs[0], None)],
        _ => {}
    }
    let mut masks: Vec<(usize, usize)> = locs.windows(2).map(|w| (w[0], w[1])).collect();
    masks.push((locs[locs.len() - 1], ids.len()));
    let mut last_end = masks[masks.len() - 1].1;
    for m in masks.iter_mut().rev() {
        if m.0 + 1 == m.1 {
            m.1 = last_end;
        }
        last_end = m.1;
    }
    masks.into_iter().map(|(s, e)| (s, Some(e))).collect()
}

/// `convert_sparse_cross_attention_mask_to_dense` for one row: (length, images, max_tiles) as
/// 0/1, row-major; image `i` is seen by the tokens of its range, on its first `num_tiles[i]` tiles.
pub fn dense_cross_attention_mask(
    ranges: &[(usize, Option<usize>)],
    num_tiles: &[usize],
    max_tiles: usize,
    length: usize,
) -> Vec<u8> {
    let n_images = num_tiles.len();
    let mut mask = vec![0u8; length * n_images * max_tiles];
    for (i, (&(start, end), &tiles)) in ranges.iter().zip(num_tiles).enumerate() {
        let end = end.map_or(length, |e| e.min(length));
        for t in start..end {
            for k in 0..tiles.min(max_tiles) {
                mask[(t * n_images + i) * max_tiles + k] = 1;
            }
        }
    }
    mask
}

/// `build_string_from_input`: the BOS token prepended (after any leading image tokens) when the
/// prompt does not contain it anywhere.
pub fn build_string_from_input(prompt: &str, bos: &str, image_token: &str) -> String {
    if bos.is_empty() || prompt.contains(bos) {
        return prompt.to_owned();
    }
    let mut rest = prompt;
    let mut n = 0;
    while !image_token.is_empty()
        && let Some(r) = rest.strip_prefix(image_token)
    {
        rest = r;
        n += 1;
    }
    format!("{}{bos}{rest}", image_token.repeat(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_aspect_ratios_for_four_tiles_are_transformers_list() {
        assert_eq!(supported_aspect_ratios(4), vec![(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (3, 1), (4, 1)]);
        assert_eq!(supported_aspect_ratios(1), vec![(1, 1)]);
    }

    #[test]
    fn the_canvas_is_the_smallest_upscale_else_the_largest_downscale() {
        // Values derived by running transformers' get_optimal_tiled_canvas(h, w, 4, 560).
        let t = 560;
        assert_eq!(optimal_tiled_canvas(100, 100, 4, t), (560, 560)); // upscale 5.6, area smallest
        assert_eq!(optimal_tiled_canvas(560, 560, 4, t), (560, 560));
        assert_eq!(optimal_tiled_canvas(600, 600, 4, t), (1120, 1120)); // 1.87 up
        assert_eq!(optimal_tiled_canvas(300, 1200, 4, t), (560, 1680)); // (1, 3): scale 1.4 up
        assert_eq!(optimal_tiled_canvas(5000, 400, 4, t), (2240, 560)); // nothing upscales: 0.448
        assert_eq!(optimal_tiled_canvas(4000, 4000, 4, t), (1120, 1120)); // 0.28 down
        // A tie between (1, 2) and (1, 4) at scale 1.0 (height decides): smallest area.
        assert_eq!(optimal_tiled_canvas(560, 100, 4, t), (560, 560));
    }

    #[test]
    fn the_image_fits_the_canvas_keeping_its_aspect_ratio() {
        let t = 560;
        // Values from transformers' get_image_size_fit_to_canvas. Each side is first clipped to
        // [tile, canvas]; the binding scale then decides, so a wide image smaller than its canvas
        // keeps its size (300 x 1200 stays) and a small one grows to a tile on one side.
        assert_eq!(size_fit_to_canvas(100, 100, 560, 560, t), (560, 560));
        assert_eq!(size_fit_to_canvas(300, 1200, 560, 1680, t), (300, 1200));
        assert_eq!(size_fit_to_canvas(5000, 400, 2240, 560, t), (2240, 179));
        // 90 * 2.8 = 251.99999999999997 in f64: floor 251.
        assert_eq!(size_fit_to_canvas(200, 90, 560, 560, t), (560, 251));
        // A very thin image keeps a side of at least 1 pixel.
        assert_eq!(size_fit_to_canvas(2, 4000, 560, 2240, t), (1, 2240));
    }

    #[test]
    fn tiles_are_cut_row_by_row_with_channels_inside() {
        // 2 x 2 tiles of 1 x 1 pixel: value = c * 100 + y * 10 + x.
        let (h, w) = (2, 2);
        let chw: Vec<f32> =
            (0..3).flat_map(|c| (0..h).flat_map(move |y| (0..w).map(move |x| (c * 100 + y * 10 + x) as f32))).collect();
        let tiles = split_to_tiles(&chw, h, w, 2, 2);
        assert_eq!(tiles, vec![0., 100., 200., 1., 101., 201., 10., 110., 210., 11., 111., 211.]);
    }

    #[test]
    fn aspect_ratio_ids_and_masks_follow_the_chosen_canvas() {
        let cfg = ImageProcessorConfig::from_value(
            &serde_json::json!({"size": {"height": 4, "width": 4}}),
            Path::new("p"),
            "",
        )
        .unwrap();
        let img = Rgb8 { width: 9, height: 3, data: vec![255; 27 * 3] };
        let p = process_rgb(img, &cfg);
        // 3 x 9 with 4 px tiles: canvas (1, 3) = 4 x 12 (scale min(4/3, 12/9) = 1.33, the
        // smallest upscale); the image keeps its size and is padded.
        assert_eq!(p.aspect_ratio, (1, 3));
        assert_eq!(p.aspect_ratio_id, 3);
        assert_eq!(p.aspect_ratio_mask, vec![1, 1, 1, 0]);
        assert_eq!(p.pixel_values.len(), 4 * 3 * 16);
        assert!(p.pixel_values[3 * 3 * 16..].iter().all(|&v| v == 0.0));
        assert_eq!((p.resized.width, p.resized.height), (9, 3));
        // Tile 0's last row is padding: (0 - 0.5) / 0.5; its first row white: (1 - 0.5) / 0.5.
        assert_eq!(p.pixel_values[12], -1.0);
        assert_eq!(p.pixel_values[0], 1.0);
        let one = process_rgb(Rgb8 { width: 2, height: 2, data: vec![0; 12] }, &cfg);
        assert_eq!((one.aspect_ratio_id, one.aspect_ratio_mask.clone()), (1, vec![1, 0, 0, 0]));
    }

    #[test]
    fn cross_attention_ranges_follow_the_image_tokens() {
        const I: u32 = 9;
        assert_eq!(cross_attention_token_mask(&[1, 2, 3], I), vec![]);
        assert_eq!(cross_attention_token_mask(&[1, I, 3, 4], I), vec![(1, None)]);
        // Two images apart: the first until the second; the last to the end.
        assert_eq!(cross_attention_token_mask(&[I, 5, I, 6], I), vec![(0, Some(2)), (2, Some(4))]);
        // Consecutive images both attend to the text after them.
        assert_eq!(cross_attention_token_mask(&[1, I, I, 6, 7], I), vec![(1, Some(5)), (2, Some(5))]);
        let dense = dense_cross_attention_mask(&[(1, None)], &[2], 4, 3);
        assert_eq!(dense, vec![0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0]);
    }

    #[test]
    fn bos_is_added_only_when_missing() {
        assert_eq!(build_string_from_input("<b>hi", "<b>", "<i>"), "<b>hi");
        assert_eq!(build_string_from_input("<i><i>hi", "<b>", "<i>"), "<i><i><b>hi");
        assert_eq!(build_string_from_input("hi", "<b>", "<i>"), "<b>hi");
    }
}
