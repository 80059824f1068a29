//! Dequantization of ggml blocks to `f32`.
//!
//! Each routine follows python `gguf`'s `quants.py` operation by operation (same `f32`
//! multiplications and additions in the same order, no fused multiply-add), so results are
//! bit-identical to `gguf.quants.dequantize`; the fixture tests check that.

use half::f16;

use crate::{GgmlType, GgufError, Result};

const QK_K: usize = 256;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantize `n_elements` values of type `ggml_type` from `data` to `f32`.
///
/// `what` names the tensor in errors. Fails with [`GgufError::BadDataLength`] when `data` does
/// not hold exactly `n_elements`, and with [`GgufError::UnsupportedType`] for types outside
/// [`GgmlType::can_dequantize`]. Tensors of 2^18 elements or more are decoded on all cores
/// (whole blocks per thread, so the result is the same).
pub fn dequantize(
    data: &[u8],
    ggml_type: GgmlType,
    n_elements: usize,
    what: &str,
) -> Result<Vec<f32>> {
    let expected = ggml_type.bytes_for(n_elements as u64);
    if expected != Some(data.len() as u64) {
        return Err(GgufError::BadDataLength {
            what: what.to_string(),
            ggml_type,
            len: data.len(),
            n_elements,
        });
    }
    if !ggml_type.can_dequantize() {
        return Err(GgufError::UnsupportedType {
            path: std::path::PathBuf::new(),
            tensor: what.to_string(),
            ggml_type,
        });
    }
    let mut out = vec![0f32; n_elements];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if n_elements < PARALLEL_MIN_ELEMENTS || threads == 1 {
        decode(data, ggml_type, &mut out);
        return Ok(out);
    }
    let (block, bytes) = (ggml_type.block_size(), ggml_type.type_size());
    let blocks_per_thread = (n_elements / block).div_ceil(threads);
    std::thread::scope(|scope| {
        for (src, dst) in data
            .chunks(blocks_per_thread * bytes)
            .zip(out.chunks_mut(blocks_per_thread * block))
        {
            scope.spawn(move || decode(src, ggml_type, dst));
        }
    });
    Ok(out)
}

/// Tensors at least this large are decoded on all cores.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 18;

/// Decode whole blocks of `data` into `out` (lengths checked and type supported by the caller).
fn decode(data: &[u8], ggml_type: GgmlType, out: &mut [f32]) {
    let bs = ggml_type.type_size();
    let blocks = data.chunks_exact(bs);
    match ggml_type {
        GgmlType::F32 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, b) in out.iter_mut().zip(data.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
            }
        }
        GgmlType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(blocks) {
                let d = f16_at(b, 0);
                for (v, &q) in o.iter_mut().zip(&b[2..34]) {
                    *v = f32::from(q as i8) * d;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(blocks) {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                for l in 0..16 {
                    o[l] = d * f32::from((qs[l] & 0x0F) as i8 - 8);
                    o[l + 16] = d * f32::from((qs[l] >> 4) as i8 - 8);
                }
            }
        }
        GgmlType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(blocks) {
                let d = f16_at(b, 0);
                let m = f16_at(b, 2);
                let qs = &b[4..20];
                for l in 0..16 {
                    o[l] = d * f32::from(qs[l] & 0x0F) + m;
                    o[l + 16] = d * f32::from(qs[l] >> 4) + m;
                }
            }
        }
        GgmlType::Q4_K => {
            for (o, b) in out.chunks_exact_mut(QK_K).zip(blocks) {
                let d = f16_at(b, 0);
                let dmin = f16_at(b, 2);
                let (sc, mn) = scale_min_k4(&b[4..16]);
                let qs = &b[16..144];
                for (e, v) in o.iter_mut().enumerate() {
                    let (j, l) = (e / 32, e % 32);
                    let (g, sub) = (e / 64, (e / 32) % 2);
                    let q = (qs[g * 32 + l] >> (4 * sub)) & 0x0F;
                    *v = (d * f32::from(sc[j])) * f32::from(q) - dmin * f32::from(mn[j]);
                }
            }
        }
        GgmlType::Q5_K => {
            for (o, b) in out.chunks_exact_mut(QK_K).zip(blocks) {
                let d = f16_at(b, 0);
                let dmin = f16_at(b, 2);
                let (sc, mn) = scale_min_k4(&b[4..16]);
                let qh = &b[16..48];
                let qs = &b[48..176];
                for (e, v) in o.iter_mut().enumerate() {
                    let (j, l) = (e / 32, e % 32);
                    let (g, sub) = (e / 64, (e / 32) % 2);
                    let lo = (qs[g * 32 + l] >> (4 * sub)) & 0x0F;
                    let hi = (qh[l] >> j) & 0x01;
                    let q = lo | (hi << 4);
                    *v = (d * f32::from(sc[j])) * f32::from(q) - dmin * f32::from(mn[j]);
                }
            }
        }
        GgmlType::Q6_K => {
            for (o, b) in out.chunks_exact_mut(QK_K).zip(blocks) {
                let ql = &b[0..128];
                let qh = &b[128..192];
                let scales = &b[192..208];
                let d = f16_at(b, 208);
                for (e, v) in o.iter_mut().enumerate() {
                    let (h, j) = (e / 128, e % 128);
                    let lo = (ql[h * 64 + j % 64] >> (4 * (j / 64))) & 0x0F;
                    let hi = (qh[h * 32 + j % 32] >> (2 * (j / 32))) & 0x03;
                    let q = (lo | (hi << 4)) as i8 - 32;
                    let scale = f32::from(scales[e / 16] as i8);
                    *v = (d * scale) * f32::from(q);
                }
            }
        }
        // Refused by `dequantize` before decoding.
        _ => {}
    }
}

/// The 8 six-bit scales and mins packed into 12 bytes (Q4_K and Q5_K), as python `gguf`'s
/// `Q4_K.get_scale_min`.
fn scale_min_k4(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (d, m, md) = (&s[0..4], &s[4..8], &s[8..12]);
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = d[j] & 0x3F;
        mn[j] = m[j] & 0x3F;
        sc[j + 4] = (md[j] & 0x0F) | ((d[j] >> 2) & 0x30);
        mn[j + 4] = (md[j] >> 4) | ((m[j] >> 2) & 0x30);
    }
    (sc, mn)
}
