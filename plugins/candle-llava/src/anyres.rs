//! LLaVA-NeXT's "anyres" images, as transformers 5.24 handles them, in three places.
//!
//! **Image processor** (`LlavaNextImageProcessorPil`, transformers' PIL backend, which the goldens
//! record; the torchvision one resizes differently), one function per step:
//! 1. The reference loader's `Image.open(path).convert("RGB")` ([`image_proc::LOADER`]): the
//!    processor's own `convert_to_rgb` never sees alpha.
//! 2. [`select_best_resolution`]: the grid pinpoint (height, width) that keeps the most of the
//!    image's pixels once the image is scaled to fit in it, the least wasted area breaking ties,
//!    the first listed winning full ties.
//! 3. [`resize_for_patching`]: Pillow bicubic to [`patch_output_size`]: the side that limits the
//!    scale fills the pinpoint exactly, the other is scaled and rounded up (`math.ceil`).
//! 4. [`pad_for_patching`]: zero (black) padding up to the pinpoint, centred; an odd pixel of
//!    padding goes to the bottom or the right (`divmod(target - size, 2)`).
//! 5. [`divide_to_patches`]: tiles of the crop size, row by row.
//! 6. [`base_image`]: the whole image resized (aspect not kept) to (shortest_edge,
//!    shortest_edge), or to `size`'s (height, width).
//! 7. The base image, then each tile, through the `CLIPImageProcessor` steps (resize, centre crop,
//!    rescale, normalise; [`image_proc::resize_and_crop`], [`image_proc::to_pixel_values`]):
//!    pixel values (tiles + 1, 3, H, W) and the original (height, width).
//!
//! **Processor** (`LlavaNextProcessor._get_number_of_features`): [`TokenCount`] gives the number
//! of `<image>` tokens an image expands to: the base image's features (+ the CLS position the
//! processor counts, - 1 under the `default` strategy), the tile grid's features after
//! unpadding, and one newline per unpadded row. `vlm_core::tokenizer::expand_image_tokens` writes them in.
//!
//! **Model** (`LlavaNextModel.pack_image_features`): [`pack_image_features`] turns one image's
//! projected features per tile into the rows spliced into the prompt: the base tile's features,
//! then the tiles' features laid out as one feature map, unpadded ([`unpad_ranges`]), with the
//! `image_newline` vector after each row.
//!
//! Unpadding rounds like Python's `int(round(x, 7))` ([`int_round7`]), in the processor's count
//! and in the model alike. candle-transformers' llava_next rounds differently, which changes the
//! count for wide images; nothing here comes from it.

use std::ops::Range;
use std::path::Path;

use candle_core::Tensor;

use crate::config::{ImageProcessorConfig, ModelConfig, ProcessorConfig, ResizeTarget, SelectStrategy, VisionConfig};
use vlm_core::image::{ImageError, Rgb8};
use vlm_core::resize::resize_bicubic;

use crate::image_proc;

/// A size or a resolution as (height, width), the order of transformers' `image_sizes` and
/// `image_grid_pinpoints`.
pub type Size = (usize, usize);

#[derive(Debug, thiserror::Error)]
pub enum AnyresError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("image_grid_pinpoints is empty")]
    NoPinpoints,
    /// A size that makes a step impossible (a zero size, tiles that differ in shape, ...).
    #[error("{0}")]
    Geometry(String),
    /// Image features that do not fit the grid the image's size implies.
    #[error("image features: {0}")]
    Features(String),
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, AnyresError>;

fn geometry_error(message: impl Into<String>) -> AnyresError {
    AnyresError::Geometry(message.into())
}

// ---------------------------------------------------------------------------------------------
// Image processor
// ---------------------------------------------------------------------------------------------

/// `select_best_resolution(original_size, possible_resolutions)`; `None` when there are no
/// pinpoints or the image is empty.
pub fn select_best_resolution(original: Size, pinpoints: &[Size]) -> Option<Size> {
    let (oh, ow) = original;
    if oh == 0 || ow == 0 {
        return None;
    }
    let mut best = None;
    let mut max_effective = 0usize;
    let mut min_wasted = i64::MAX; // Python starts from float("inf")
    for &(h, w) in pinpoints {
        let scale = f64::min(w as f64 / ow as f64, h as f64 / oh as f64);
        // int() truncates toward zero; both products are non-negative.
        let down_w = (ow as f64 * scale) as usize;
        let down_h = (oh as f64 * scale) as usize;
        let effective = down_w.saturating_mul(down_h).min(ow.saturating_mul(oh));
        let wasted = w.saturating_mul(h) as i64 - effective as i64;
        if effective > max_effective || (effective == max_effective && wasted < min_wasted) {
            max_effective = effective;
            min_wasted = wasted;
            best = Some((h, w));
        }
    }
    best
}

/// `get_patch_output_size`: the size an image of `original` size is resized to before it is
/// padded to `target`.
pub fn patch_output_size(original: Size, target: Size) -> Size {
    let (oh, ow) = original;
    let (th, tw) = target;
    let scale_w = tw as f64 / ow as f64;
    let scale_h = th as f64 / oh as f64;
    if scale_w < scale_h {
        (((oh as f64 * scale_w).ceil() as usize).min(th), tw)
    } else {
        (th, ((ow as f64 * scale_h).ceil() as usize).min(tw))
    }
}

/// `_resize_for_patching`: Pillow bicubic to [`patch_output_size`].
pub fn resize_for_patching(img: &Rgb8, target: Size) -> Rgb8 {
    let (h, w) = patch_output_size((img.height, img.width), target);
    resize_bicubic(img, w, h)
}

/// Padding around an image of `size` up to `target`: ((top, bottom), (left, right)), as
/// `_get_padding_size` computes it with `divmod`.
pub fn padding_for_patching(size: Size, target: Size) -> ((usize, usize), (usize, usize)) {
    let (h, w) = size;
    let (th, tw) = target;
    let (top, extra_y) = (th.saturating_sub(h) / 2, th.saturating_sub(h) % 2);
    let (left, extra_x) = (tw.saturating_sub(w) / 2, tw.saturating_sub(w) % 2);
    ((top, top + extra_y), (left, left + extra_x))
}

/// `_pad_for_patching`: zero padding, centred, to `target`. transformers takes the padding
/// from `get_patch_output_size` of the (already resized) image, which is the image's own size.
pub fn pad_for_patching(img: &Rgb8, target: Size) -> Rgb8 {
    let size = patch_output_size((img.height, img.width), target);
    let ((top, bottom), (left, right)) = padding_for_patching(size, target);
    let width = left + img.width + right;
    let height = top + img.height + bottom;
    let mut data = vec![0u8; width * height * 3];
    for y in 0..img.height {
        let src = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
        let start = ((top + y) * width + left) * 3;
        data[start..start + img.width * 3].copy_from_slice(src);
    }
    Rgb8 { width, height, data }
}

/// Copies the rectangle `rows` x `cols` out of `img`.
fn crop(img: &Rgb8, rows: Range<usize>, cols: Range<usize>) -> Rgb8 {
    let mut data = Vec::with_capacity(rows.len() * cols.len() * 3);
    for y in rows.clone() {
        let start = (y * img.width + cols.start) * 3;
        data.extend_from_slice(&img.data[start..start + cols.len() * 3]);
    }
    Rgb8 { width: cols.len(), height: rows.len(), data }
}

/// `divide_to_patches`: `tile` x `tile` tiles, row by row (the last row or column smaller when
/// the image is not a multiple of `tile`, as numpy slicing leaves it).
pub fn divide_to_patches(img: &Rgb8, tile: usize) -> Vec<Rgb8> {
    let mut out = Vec::new();
    if tile == 0 {
        return out;
    }
    for y in (0..img.height).step_by(tile) {
        for x in (0..img.width).step_by(tile) {
            out.push(crop(img, y..(y + tile).min(img.height), x..(x + tile).min(img.width)));
        }
    }
    out
}

/// The size the base image is resized to: `size`'s (height, width), or a square of its
/// shortest edge.
pub fn base_size(size: ResizeTarget) -> Size {
    match size {
        ResizeTarget::ShortestEdge(s) => (s, s),
        ResizeTarget::Exact { height, width } => (height, width),
    }
}

/// The whole image, resized to [`base_size`] (aspect not kept).
pub fn base_image(img: &Rgb8, size: ResizeTarget) -> Rgb8 {
    let (h, w) = base_size(size);
    resize_bicubic(img, w, h)
}

/// The tile size: the crop height (or, without one, `size`'s height or shortest edge).
pub fn tile_size(cfg: &ImageProcessorConfig) -> usize {
    if cfg.crop_size.0 > 0 { cfg.crop_size.0 } else { base_size(cfg.size).0 }
}

fn check_sizes(cfg: &ImageProcessorConfig) -> Result<()> {
    let (bh, bw) = base_size(cfg.size);
    if bh == 0 || bw == 0 || cfg.crop_size.0 == 0 || cfg.crop_size.1 == 0 {
        return Err(geometry_error(format!(
            "image processor: size {:?} and crop_size {:?} must be positive",
            cfg.size, cfg.crop_size
        )));
    }
    Ok(())
}

/// `get_image_patches`: the base image, then the tiles of the image resized and padded to its
/// best pinpoint, all 8-bit and not yet through the CLIP steps.
pub fn image_patches(img: &Rgb8, cfg: &ImageProcessorConfig) -> Result<Vec<Rgb8>> {
    check_sizes(cfg)?;
    let pinpoints = cfg.grid_pinpoints();
    let best = select_best_resolution((img.height, img.width), &pinpoints).ok_or(AnyresError::NoPinpoints)?;
    let resized = resize_for_patching(img, best);
    let padded = pad_for_patching(&resized, best);
    let mut patches = vec![base_image(img, cfg.size)];
    patches.extend(divide_to_patches(&padded, tile_size(cfg)));
    Ok(patches)
}

/// One image's pixel values, as `LlavaNextImageProcessor` returns them.
#[derive(Debug, Clone, PartialEq)]
pub struct AnyresPixels {
    /// (num_patches, 3, height, width), row-major: the base image first, then the tiles.
    pub values: Vec<f32>,
    pub num_patches: usize,
    pub height: usize,
    pub width: usize,
    /// The image's size after `convert_to_rgb`, (height, width): `image_sizes`.
    pub image_size: Size,
}

/// The processor's pixel values for an RGB image: [`image_patches`], then each through the
/// CLIP steps.
pub fn preprocess_rgb(img: &Rgb8, cfg: &ImageProcessorConfig) -> Result<AnyresPixels> {
    let mut values = Vec::new();
    let mut shape = None;
    let patches = image_patches(img, cfg)?;
    for patch in &patches {
        let patch = image_proc::resize_and_crop(patch, cfg);
        let this = (patch.height, patch.width);
        if *shape.get_or_insert(this) != this {
            return Err(geometry_error(format!("tiles of different sizes ({shape:?} and {this:?}): set a crop size")));
        }
        values.extend(image_proc::to_pixel_values(&patch, cfg));
    }
    let (height, width) = shape.ok_or_else(|| geometry_error("no tiles"))?;
    Ok(AnyresPixels { values, num_patches: patches.len(), height, width, image_size: (img.height, img.width) })
}

/// Opens an image file and runs [`preprocess_rgb`].
pub fn preprocess(path: &Path, cfg: &ImageProcessorConfig) -> Result<AnyresPixels> {
    preprocess_rgb(&image_proc::LOADER.open(path)?, cfg)
}

// ---------------------------------------------------------------------------------------------
// Unpadding (processor and model)
// ---------------------------------------------------------------------------------------------

/// Python's `int(round(x, 7))` for `x >= 0`. `round` rounds the exact binary value to 7
/// decimals, as `{:.7}` formatting does; the two differ at most on exact ties, and no tie sits
/// next to an integer (n - 5e-8 is not a binary fraction), so the truncation agrees.
pub fn int_round7(x: f64) -> usize {
    let rounded = format!("{x:.7}").parse::<f64>().unwrap_or(x);
    rounded.trunc().max(0.0) as usize
}

/// `unpad_image`: the rows and columns of a `current`-sized feature map (of an image padded to
/// a pinpoint) that show the image of `original` size, the padding on both sides dropped.
pub fn unpad_ranges(original: Size, current: Size) -> (Range<usize>, Range<usize>) {
    let (oh, ow) = original;
    let (ch, cw) = current;
    let original_aspect = ow as f64 / oh as f64;
    let current_aspect = cw as f64 / ch as f64;
    // `(current - new) // 2`; never negative since the image fits, clamped all the same.
    let keep = |current: usize, new: usize| {
        let padding = (current as i64 - new as i64).div_euclid(2).clamp(0, current as i64 / 2) as usize;
        padding..current - padding
    };
    if original_aspect > current_aspect {
        let new_height = int_round7(oh as f64 * (cw as f64 / ow as f64));
        (keep(ch, new_height), 0..cw)
    } else {
        let new_width = int_round7(ow as f64 * (ch as f64 / oh as f64));
        (0..ch, keep(cw, new_width))
    }
}

// ---------------------------------------------------------------------------------------------
// Processor: image tokens
// ---------------------------------------------------------------------------------------------

/// What `LlavaNextProcessor` counts an image's `<image>` tokens with.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenCount {
    /// The image processor's `image_grid_pinpoints`.
    pub pinpoints: Vec<Size>,
    /// The processor's `patch_size` (the vision tower's).
    pub patch_size: usize,
    /// Positions the vision tower adds per tile (1 for CLIP's CLS).
    pub num_additional_image_tokens: usize,
    /// `vision_feature_select_strategy == "default"`: one token fewer.
    pub default_strategy: bool,
}

impl TokenCount {
    /// The processor's own settings; `None` when it has no `patch_size` (it then cannot count).
    pub fn from_processor(proc: &ProcessorConfig) -> Option<Self> {
        Some(Self {
            pinpoints: proc.image.grid_pinpoints(),
            patch_size: proc.patch_size?,
            num_additional_image_tokens: proc.num_additional_image_tokens,
            default_strategy: proc.vision_feature_select_strategy.as_deref() == Some("default"),
        })
    }

    /// The count the model's features come to, for processors that do not say how to count:
    /// CLIP's patch size and CLS position, the model's grid and strategy.
    pub fn from_model(cfg: &ModelConfig) -> Self {
        Self {
            pinpoints: cfg.image_grid_pinpoints.clone(),
            patch_size: cfg.llava.vision.patch_size,
            num_additional_image_tokens: 1,
            default_strategy: cfg.llava.select_strategy == SelectStrategy::Default,
        }
    }

    /// `_get_number_of_features(orig_height, orig_width, height, width)`, for an image of
    /// `original` size processed to tiles of `processed` size.
    pub fn number_of_features(&self, original: Size, processed: Size) -> Result<usize> {
        let (ph, pw) = processed;
        if ph == 0 || pw == 0 || self.patch_size == 0 {
            return Err(geometry_error(format!("tiles of {ph}x{pw} with patch size {}", self.patch_size)));
        }
        let (best_h, best_w) = select_best_resolution(original, &self.pinpoints).ok_or(AnyresError::NoPinpoints)?;
        let (scale_h, scale_w) = (best_h / ph, best_w / pw);
        let (patches_h, patches_w) = (ph / self.patch_size, pw / self.patch_size);
        let current = (patches_h * scale_h, patches_w * scale_w);
        if current.0 == 0 || current.1 == 0 {
            return Err(geometry_error(format!(
                "pinpoint {best_h}x{best_w} holds no {ph}x{pw} tile of {}-pixel patches",
                self.patch_size
            )));
        }
        let (rows, cols) = unpad_ranges(original, current);
        let unpadded = rows.len() * cols.len();
        let newlines = rows.len();
        let base = patches_h * patches_w + self.num_additional_image_tokens;
        Ok(unpadded + newlines + base)
    }

    /// The `<image>` tokens one image expands to (`replace_image_token`).
    pub fn num_image_tokens(&self, original: Size, processed: Size) -> Result<usize> {
        let n = self.number_of_features(original, processed)?;
        if self.default_strategy {
            n.checked_sub(1).ok_or_else(|| geometry_error("no image features to drop the CLS position from"))
        } else {
            Ok(n)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Model: packing the features
// ---------------------------------------------------------------------------------------------

/// The geometry the model packs an image's features with.
#[derive(Debug, Clone, Copy)]
pub struct PackGeometry<'a> {
    /// The model config's `image_grid_pinpoints`.
    pub pinpoints: &'a [Size],
    /// The vision tower's input size (`vision_config.image_size`): one tile.
    pub tile: usize,
    /// Feature positions per tile side (`image_size // patch_size`).
    pub side: usize,
}

impl<'a> PackGeometry<'a> {
    /// The model config's grid and vision tower.
    pub fn new(pinpoints: &'a [Size], vision: &VisionConfig) -> Self {
        Self { pinpoints, tile: vision.image_size, side: vision.patches_per_side() }
    }

    /// `get_anyres_image_grid_shape`: tiles down and across, (rows, cols).
    pub fn grid_shape(&self, image_size: Size) -> Result<Size> {
        let (h, w) = select_best_resolution(image_size, self.pinpoints).ok_or(AnyresError::NoPinpoints)?;
        if self.tile == 0 {
            return Err(geometry_error("vision image_size is 0"));
        }
        Ok((h / self.tile, w / self.tile))
    }

    /// `image_size_to_num_patches`: the tiles the pinpoint is cut into (rounding up) plus the
    /// base image.
    pub fn num_patches(&self, image_size: Size) -> Result<usize> {
        let (h, w) = select_best_resolution(image_size, self.pinpoints).ok_or(AnyresError::NoPinpoints)?;
        if self.tile == 0 {
            return Err(geometry_error("vision image_size is 0"));
        }
        Ok(h.div_ceil(self.tile) * w.div_ceil(self.tile) + 1)
    }
}

/// `pack_image_features` for one image: `features` (tiles, positions, hidden) as the projector
/// gives them, base image first; `newline` the `image_newline` vector (hidden,). Returns
/// (rows, hidden).
///
/// transformers lays the tiles out channels-first, (hidden, rows * side, cols * side), unpads,
/// appends the newline column and flattens back to positions; the same layout is built here
/// channels-last, (rows * side, cols * side, hidden), which reads the positions in the same
/// order.
pub fn pack_image_features(
    features: &Tensor,
    image_size: Size,
    geometry: &PackGeometry,
    newline: Option<&Tensor>,
) -> Result<Tensor> {
    let (n, positions, hidden) = features.dims3()?;
    if n == 0 {
        return Err(AnyresError::Features("no tiles".into()));
    }
    let newline = newline.map(|t| t.to_dtype(features.dtype())?.reshape((1, hidden))).transpose()?;
    let base = features.get(0)?;
    if n == 1 {
        return Ok(match newline {
            Some(nl) => Tensor::cat(&[&base, &nl], 0)?,
            None => base,
        });
    }
    let (rows, cols) = geometry.grid_shape(image_size)?;
    let side = geometry.side;
    if (n - 1) * positions != rows * cols * side * side {
        return Err(AnyresError::Features(format!(
            "{} tiles of {positions} positions do not make a {rows}x{cols} grid of {side}x{side} (image {}x{})",
            n - 1,
            image_size.0,
            image_size.1
        )));
    }
    let map = features
        .narrow(0, 1, n - 1)?
        .reshape((rows, cols, side, side, hidden))?
        .permute((0, 2, 1, 3, 4))?
        .reshape((rows * side, cols * side, hidden))?;
    let (keep_rows, keep_cols) = unpad_ranges(image_size, (rows * side, cols * side));
    let map = map.narrow(0, keep_rows.start, keep_rows.len())?.narrow(1, keep_cols.start, keep_cols.len())?;
    let map = match newline {
        Some(nl) => {
            let column = nl.reshape((1, 1, hidden))?.broadcast_as((keep_rows.len(), 1, hidden))?;
            Tensor::cat(&[&map, &column], 1)?
        }
        None => map,
    };
    let (h, w, _) = map.dims3()?;
    let map = map.reshape((h * w, hidden))?;
    Ok(Tensor::cat(&[&base, &map], 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use vlm_core::npy;

    const PINPOINTS: [Size; 5] = [(56, 112), (112, 56), (112, 112), (168, 56), (56, 168)];
    const REAL_PINPOINTS: [Size; 5] = crate::config::DEFAULT_GRID_PINPOINTS;
    const IMAGES: [&str; 7] = ["square", "wide", "tall", "tiny", "large", "gray", "rgba"];

    fn golden(name: &str) -> serde_json::Value {
        let path = crate::test_util::fixtures().join("golden").join(name).join("golden.json");
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            .unwrap()
    }

    /// Each case's fields for one image (the first case that shows it).
    fn case_for<'a>(g: &'a serde_json::Value, image: &str) -> &'a serde_json::Value {
        let want = format!("images/{image}.png");
        g["cases"].as_array().unwrap().iter().find(|c| c["image"] == want.as_str()).unwrap()
    }

    #[test]
    fn best_resolution_and_resize_match_transformers() {
        // (w, h) -> best pinpoint, resized size, both (height, width); from transformers'
        // select_best_resolution and get_patch_output_size on the fixture images.
        let cases = [
            ((64, 64), (112, 112), (112, 112)),
            ((200, 90), (56, 168), (56, 125)),
            ((90, 200), (168, 56), (125, 56)),
            ((5, 3), (56, 112), (56, 94)),
            ((1500, 900), (112, 112), (68, 112)),
            ((120, 80), (112, 112), (75, 112)),
            ((96, 72), (112, 112), (84, 112)),
        ];
        for ((w, h), best, resized) in cases {
            assert_eq!(select_best_resolution((h, w), &PINPOINTS), Some(best), "{w}x{h}");
            assert_eq!(patch_output_size((h, w), best), resized, "{w}x{h}");
            // The resized image keeps its size when the padding step measures it again.
            assert_eq!(patch_output_size(resized, best), resized, "{w}x{h}");
        }
        // No pixel survives the scale (h 2 -> 0): every pinpoint is worth 0 and the first, with
        // the least waste, wins.
        assert_eq!(select_best_resolution((2, 3000), &REAL_PINPOINTS), Some((336, 672)));
        assert_eq!(select_best_resolution((2, 3000), &[]), None);
        assert_eq!(select_best_resolution((0, 3), &PINPOINTS), None);
    }

    #[test]
    fn padding_centres_with_the_odd_pixel_after() {
        assert_eq!(padding_for_patching((56, 125), (56, 168)), ((0, 0), (21, 22)));
        assert_eq!(padding_for_patching((125, 56), (168, 56)), ((21, 22), (0, 0)));
        assert_eq!(padding_for_patching((112, 112), (112, 112)), ((0, 0), (0, 0)));
        let img = Rgb8 { width: 1, height: 1, data: vec![9, 8, 7] };
        let p = pad_for_patching(&img, (1, 4));
        assert_eq!((p.height, p.width), (1, 4));
        assert_eq!(p.data, vec![0, 0, 0, 9, 8, 7, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn tiles_go_row_by_row() {
        let data: Vec<u8> = (0..4 * 6).flat_map(|i| [i as u8; 3]).collect();
        let img = Rgb8 { width: 6, height: 4, data };
        let tiles = divide_to_patches(&img, 2);
        assert_eq!(tiles.len(), 6);
        let firsts: Vec<u8> = tiles.iter().map(|t| t.data[0]).collect();
        assert_eq!(firsts, vec![0, 2, 4, 12, 14, 16]);
        assert_eq!(tiles[1].data.iter().step_by(3).copied().collect::<Vec<_>>(), vec![2, 3, 8, 9]);
        // Not a multiple: the edge tiles are smaller.
        let tiles = divide_to_patches(&img, 4);
        assert_eq!(tiles.iter().map(|t| (t.height, t.width)).collect::<Vec<_>>(), vec![(4, 4), (4, 2)]);
    }

    #[test]
    fn round7_truncates_like_python() {
        assert_eq!(int_round7(55.99999999), 56);
        assert_eq!(int_round7(55.9999), 55);
        assert_eq!(int_round7(56.0), 56);
        assert_eq!(int_round7(0.5), 0);
        // 90 * (28 / 200) = 12.6 in binary
        assert_eq!(int_round7(90.0 * (28.0 / 200.0)), 12);
    }

    #[test]
    fn unpad_ranges_follow_unpad_image() {
        // The fixtures' `wide` (h 90, w 200) on a 1x3 grid: a 4 x 12 map, less wide than the
        // image, so columns go: width int(200 * 4/90 = 8.9) = 8, padding 2 a side.
        assert_eq!(unpad_ranges((90, 200), (4, 12)), (0..4, 2..10));
        // `tall` (h 200, w 90) on 3x1: 12 x 4, wider than the image: height 8, 2 rows a side.
        assert_eq!(unpad_ranges((200, 90), (12, 4)), (2..10, 0..4));
        // Equal aspects: nothing to cut.
        assert_eq!(unpad_ranges((64, 64), (8, 8)), (0..8, 0..8));
        // `large` (h 900, w 1500) on 2x2 (8 x 8): height int(900 * 8/1500 = 4.8) = 4, 2 rows a side.
        assert_eq!(unpad_ranges((900, 1500), (8, 8)), (2..6, 0..8));
        // Real geometry, 480x640 on 672x672 (48 x 48): height 36, padding 6.
        assert_eq!(unpad_ranges((480, 640), (48, 48)), (6..42, 0..48));
    }

    #[test]
    fn token_counts_match_the_goldens() {
        let g = golden("llava_next");
        let proc = ProcessorConfig::from_dir(&crate::test_util::fixtures().join("checkpoints/llava_next")).unwrap();
        let count = TokenCount::from_processor(&proc).unwrap();
        for case in g["cases"].as_array().unwrap() {
            let sizes = &case["pixel_values"]["image_sizes"][0];
            let size = (sizes[0].as_u64().unwrap() as usize, sizes[1].as_u64().unwrap() as usize);
            let want = case["num_image_tokens"].as_u64().unwrap() as usize;
            assert_eq!(count.num_image_tokens(size, (56, 56)).unwrap(), want, "{}", case["image"]);
        }
    }

    #[test]
    fn token_counts_match_transformers_at_real_geometry() {
        // LlavaNextProcessor._get_number_of_features(h, w, 336, 336) - 1 with patch_size 14,
        // num_additional_image_tokens 1 and the default pinpoints, from transformers 5.24.
        let count = TokenCount {
            pinpoints: REAL_PINPOINTS.to_vec(),
            patch_size: 14,
            num_additional_image_tokens: 1,
            default_strategy: true,
        };
        let cases = [
            ((480, 640), 2340),
            ((640, 480), 2352),
            ((336, 336), 1176),
            ((1000, 1000), 2928),
            ((768, 1024), 2340),
            ((300, 1200), 1890),
            ((1200, 300), 1944),
            ((337, 1000), 2328),
            ((100, 2000), 868),
            ((224, 224), 1176),
            ((500, 333), 1476),
            ((333, 500), 1464),
            ((2, 3000), 576),
        ];
        for (size, want) in cases {
            assert_eq!(count.num_image_tokens(size, (336, 336)).unwrap(), want, "{size:?}");
        }
    }

    #[test]
    fn pixel_values_match_goldens() {
        let fx = crate::test_util::fixtures();
        let cfg = ProcessorConfig::from_dir(&fx.join("checkpoints/llava_next")).unwrap().image;
        let g = golden("llava_next");
        let mut report = String::from("image    tiles  max|diff| (1/255)  values differ\n");
        let mut worst = 0f32;
        for name in IMAGES {
            let case = case_for(&g, name);
            let px = preprocess(&fx.join(format!("images/{name}.png")), &cfg).unwrap();
            let want = npy::read_f32(&fx.join("golden/llava_next").join(case["pixel_values"]["npy"].as_str().unwrap()))
                .unwrap();
            assert_eq!(want.shape, vec![1, px.num_patches, 3, px.height, px.width], "{name}");
            let sizes = &case["pixel_values"]["image_sizes"][0];
            assert_eq!(
                (px.image_size.0 as u64, px.image_size.1 as u64),
                (sizes[0].as_u64().unwrap(), sizes[1].as_u64().unwrap()),
                "{name}"
            );
            // Compared before normalisation, in units of 1/255.
            let plane = px.height * px.width;
            let (mut max, mut n_diff) = (0f32, 0usize);
            for (i, (&a, &b)) in px.values.iter().zip(&want.data).enumerate() {
                let c = (i / plane) % 3;
                let (m, s) = (cfg.image_mean[c] as f32, cfg.image_std[c] as f32);
                let d = ((a * s + m) * 255.0 - (b * s + m) * 255.0).abs();
                max = max.max(d);
                n_diff += usize::from(a != b);
            }
            report += &format!("{name:<8} {:<6} {max:<18.4} {n_diff}\n", px.num_patches);
            worst = worst.max(max);
        }
        println!("{report}");
        assert!(worst <= 1.0 + 1e-3, "{report}");
    }

    #[test]
    fn packing_lays_tiles_out_as_one_map_then_unpads() {
        // 2 x 2 grid of 2x2 tiles, hidden 1, values naming (tile, position); an image 900x1500
        // (wider than the square grid): 4 x 4 map, new height int(900 * 4/1500 = 2.4) = 2,
        // padding 1 row each side.
        let pinpoints = [(4, 4)];
        let geo = PackGeometry { pinpoints: &pinpoints, tile: 2, side: 2 };
        let vals: Vec<f32> = (0..5).flat_map(|t| (0..4).map(move |p| (t * 10 + p) as f32)).collect();
        let feats = Tensor::from_vec(vals, (5, 4, 1), &Device::Cpu).unwrap();
        let nl = Tensor::new(&[-1f32], &Device::Cpu).unwrap();
        let out = pack_image_features(&feats, (900, 1500), &geo, Some(&nl)).unwrap();
        let out: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        // base tile, then map rows 1 and 2: row 1 = tile 1 pos 2,3 | tile 2 pos 2,3; row 2 =
        // tile 3 pos 0,1 | tile 4 pos 0,1; a newline after each.
        let want = [0., 1., 2., 3., 12., 13., 22., 23., -1., 30., 31., 40., 41., -1.];
        assert_eq!(out, want);
        // Without the newline, and for a lone base tile.
        let out = pack_image_features(&feats, (900, 1500), &geo, None).unwrap();
        assert_eq!(out.dims(), &[12, 1]);
        let one = feats.narrow(0, 0, 1).unwrap();
        let out = pack_image_features(&one, (900, 1500), &geo, Some(&nl)).unwrap();
        assert_eq!(out.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0., 1., 2., 3., -1.]);
        // Features that do not fit the grid are an error, not a panic.
        let bad = Tensor::zeros((4, 4, 1), DType::F32, &Device::Cpu).unwrap();
        assert!(matches!(pack_image_features(&bad, (900, 1500), &geo, None), Err(AnyresError::Features(_))));
    }

    #[test]
    fn model_patch_counts_match_the_goldens() {
        let fx = crate::test_util::fixtures();
        let cfg = ModelConfig::from_dir(&fx.join("checkpoints/llava_next")).unwrap();
        let geo = PackGeometry::new(&cfg.image_grid_pinpoints, &cfg.llava.vision);
        let g = golden("llava_next");
        for name in IMAGES {
            let case = case_for(&g, name);
            let sizes = &case["pixel_values"]["image_sizes"][0];
            let size = (sizes[0].as_u64().unwrap() as usize, sizes[1].as_u64().unwrap() as usize);
            let want = case["pixel_values"]["shape"][1].as_u64().unwrap() as usize;
            assert_eq!(geo.num_patches(size).unwrap(), want, "{name}");
        }
    }
}
