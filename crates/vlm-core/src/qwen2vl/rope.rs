//! Qwen2-VL's multimodal rotary positions (M-RoPE) as transformers computes them, for every
//! backend that serves arch `qwen2vl`:
//!
//! - [`rope_index`]: `Qwen2VLModel.get_rope_index` for one row of ids (text counts on from the
//!   largest position so far; an image's tokens get (t, h / merge, w / merge) grid positions
//!   offset by the text before it), and its `rope_delta`, so a decode step's position is
//!   `cache length + delta`.
//! - [`padded_prefill_positions`] / [`decode_step_positions`]: a left-padded batch's positions,
//!   padding at (1, 1, 1) as transformers gives it, each decode step at the padded length so far
//!   plus the row's delta taken against its padded length.

/// Three position ids (temporal, height, width) per token.
pub type Positions = Vec<[u32; 3]>;

/// `get_rope_index` for one unpadded row: each token's (t, h, w) position and the row's
/// `rope_delta` = max position + 1 - the row's length. `grids` are the row's images' (t, h, w)
/// in patches, in order; an image's tokens are the `image_token_id` run after a
/// `vision_start_token_id`.
pub fn rope_index(
    ids: &[u32],
    grids: &[[usize; 3]],
    image_token_id: u32,
    vision_start_token_id: u32,
    merge: usize,
) -> std::result::Result<(Positions, i64), String> {
    // transformers counts images as the vision-start tokens followed by an image token.
    let n_images = ids.windows(2).filter(|w| w[0] == vision_start_token_id && w[1] == image_token_id).count();
    if n_images != grids.len() {
        return Err(format!(
            "the prompt has {n_images} images (vision start + image token), but {} were given",
            grids.len()
        ));
    }
    let mut pos: Positions = Vec::with_capacity(ids.len());
    let mut st = 0usize;
    let mut next = 0u32; // max position so far + 1
    for &[t, h, w] in grids {
        let ed = ids[st..]
            .iter()
            .position(|&x| x == image_token_id)
            .map(|i| st + i)
            .ok_or_else(|| "fewer image tokens than images".to_owned())?;
        let (gt, gh, gw) = (t, h / merge, w / merge);
        for i in 0..(ed - st) as u32 {
            pos.push([next + i; 3]);
        }
        let base = next + (ed - st) as u32;
        for ti in 0..gt as u32 {
            for hi in 0..gh as u32 {
                for wi in 0..gw as u32 {
                    pos.push([base + ti, base + hi, base + wi]);
                }
            }
        }
        let n_tokens = gt * gh * gw;
        if ed + n_tokens > ids.len() || ids[ed..ed + n_tokens].iter().any(|&x| x != image_token_id) {
            return Err(format!("an image of grid {t}x{h}x{w} needs {n_tokens} consecutive image tokens"));
        }
        next = base + (gt.max(gh).max(gw) as u32).saturating_sub(1) + 1;
        st = ed + n_tokens;
    }
    for i in 0..(ids.len() - st) as u32 {
        pos.push([next + i; 3]);
    }
    let max = pos.iter().flat_map(|p| p.iter().copied()).max().map_or(0, |m| m as i64 + 1);
    Ok((pos, max - ids.len() as i64))
}

/// The prefill positions of a left-padded batch, row-major (b, n): `pads[r]` padding positions
/// at (1, 1, 1) (transformers' value; they are masked out) then the row's own positions.
pub fn padded_prefill_positions(rows: &[&Positions], pads: &[usize]) -> Positions {
    let mut positions = Vec::new();
    for (p, &pad) in rows.iter().zip(pads) {
        positions.extend(std::iter::repeat_n([1u32; 3], pad));
        positions.extend_from_slice(p);
    }
    positions
}

/// Each row's delta against its padded row: `rope_delta - pad` (transformers takes the delta
/// against the padded row).
pub fn padded_deltas(rope_deltas: &[i64], pads: &[usize]) -> Vec<i64> {
    rope_deltas.iter().zip(pads).map(|(d, &pad)| d - pad as i64).collect()
}

/// One decode step's positions, one per row: the cached (padded) length plus the row's padded
/// delta, the same on all three rows.
pub fn decode_step_positions(cached: usize, deltas: &[i64]) -> Positions {
    deltas.iter().map(|d| [(cached as i64 + d).max(0) as u32; 3]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMG: u32 = 9;
    const VS: u32 = 7;
    const VE: u32 = 8;

    #[test]
    fn rope_index_gives_images_grid_positions_and_text_counts_on_from_the_max() {
        // text(3) <vs> image 1x4x6 patches (merge 2: 1x2x3 tokens) <ve> text(2)
        let mut ids = vec![1, 2, 3, VS];
        ids.extend([IMG; 6]);
        ids.extend([VE, 4, 5]);
        let (pos, delta) = rope_index(&ids, &[[1, 4, 6]], IMG, VS, 2).unwrap();
        let t: Vec<u32> = pos.iter().map(|p| p[0]).collect();
        let h: Vec<u32> = pos.iter().map(|p| p[1]).collect();
        let w: Vec<u32> = pos.iter().map(|p| p[2]).collect();
        assert_eq!(t, vec![0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 7, 8, 9]);
        assert_eq!(h, vec![0, 1, 2, 3, 4, 4, 4, 5, 5, 5, 7, 8, 9]);
        assert_eq!(w, vec![0, 1, 2, 3, 4, 5, 6, 4, 5, 6, 7, 8, 9]);
        // max 9 + 1 - 13 tokens.
        assert_eq!(delta, -3);
    }

    #[test]
    fn rope_index_without_images_is_plain_counting() {
        let (pos, delta) = rope_index(&[5, 6, 7], &[], IMG, VS, 2).unwrap();
        assert_eq!(pos, vec![[0; 3], [1; 3], [2; 3]]);
        assert_eq!(delta, 0);
    }

    #[test]
    fn rope_index_handles_two_images() {
        let mut ids = vec![VS];
        ids.extend([IMG; 1]);
        ids.extend([VE, 1, VS]);
        ids.extend([IMG; 2]);
        ids.push(VE);
        let (pos, _) = rope_index(&ids, &[[1, 2, 2], [1, 2, 4]], IMG, VS, 2).unwrap();
        // vs0 img(1) ve1 t2 vs3 img(4,4,4)/(4,4,5) ve6
        assert_eq!(pos, vec![[0; 3], [1; 3], [2; 3], [3; 3], [4; 3], [5; 3], [5, 5, 6], [7; 3]]);
        let e = rope_index(&ids, &[[1, 2, 2]], IMG, VS, 2).unwrap_err();
        assert!(e.contains("2 images"), "{e}");
    }

    #[test]
    fn padding_sits_at_one_and_steps_count_on_from_the_padded_length() {
        let a: Positions = vec![[0; 3], [1; 3]];
        let b: Positions = vec![[0; 3], [1, 1, 2], [3; 3]];
        let pads = [1, 0];
        assert_eq!(padded_prefill_positions(&[&a, &b], &pads), vec![[1; 3], [0; 3], [1; 3], [0; 3], [1, 1, 2], [3; 3]]);
        let deltas = padded_deltas(&[0, 1], &pads);
        assert_eq!(deltas, vec![-1, 1]);
        assert_eq!(decode_step_positions(3, &deltas), vec![[2; 3], [4; 3]]);
    }
}
