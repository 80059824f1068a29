//! sft-gguf against python `gguf`: the synthetic fixture (every value type, every supported ggml
//! type, bit-exact dequantization, error cases) and the real SmolLM2-135M-Instruct GGUF.

use std::path::PathBuf;

use sft_gguf::{GgmlType, GgufError, GgufFile, LlamaHparams, Value};
use sha2::{Digest, Sha256};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/gguf")
        .join(name)
}

fn expected() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("quants.expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn metadata_of_every_value_type() {
    let f = GgufFile::open(fixture("quants.gguf")).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(
        f.get("general.architecture"),
        Some(&Value::String("llama".into()))
    );
    assert_eq!(f.get("test.u8"), Some(&Value::U8(200)));
    assert_eq!(f.get("test.i8"), Some(&Value::I8(-100)));
    assert_eq!(f.get("test.u16"), Some(&Value::U16(60000)));
    assert_eq!(f.get("test.i16"), Some(&Value::I16(-30000)));
    assert_eq!(f.get("test.u32"), Some(&Value::U32(4_000_000_000)));
    assert_eq!(f.get("test.i32"), Some(&Value::I32(-2_000_000_000)));
    assert_eq!(
        f.get("test.u64"),
        Some(&Value::U64(18_000_000_000_000_000_000))
    );
    assert_eq!(
        f.get("test.i64"),
        Some(&Value::I64(-9_000_000_000_000_000_000))
    );
    assert_eq!(f.get("test.f32"), Some(&Value::F32(0.1)));
    assert_eq!(f.get("test.f64"), Some(&Value::F64(0.1)));
    assert_eq!(f.get("test.bool"), Some(&Value::Bool(true)));
    assert_eq!(f.get_str("test.string").unwrap(), "héllo <|im_end|>\n");
    assert_eq!(f.get_int_array("test.array_u32").unwrap(), vec![1, 2, 3]);
    assert_eq!(
        f.get_str_array("test.array_str").unwrap(),
        vec!["a", "bb", ""]
    );
    assert_eq!(f.get_u64("test.u16").unwrap(), 60000);
    assert!(matches!(
        f.get_u64("test.i8"),
        Err(GgufError::WrongValueType { .. })
    ));
    assert!(matches!(
        f.get_str("test.u8"),
        Err(GgufError::WrongValueType { .. })
    ));
    let missing = f.get_str("no.such.key").unwrap_err().to_string();
    assert!(
        missing.contains("no.such.key") && missing.contains("quants.gguf"),
        "{missing}"
    );
}

#[test]
fn dequantization_is_bit_exact_with_python_gguf() {
    let f = GgufFile::open(fixture("quants.gguf")).unwrap();
    let exp = expected();
    let exp = exp.as_object().unwrap();
    assert_eq!(exp.len(), 9);
    for (name, e) in exp {
        let info = f.tensor(name).unwrap();
        assert_eq!(info.ggml_type.name(), e["type"].as_str().unwrap(), "{name}");
        let dims: Vec<u64> = e["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(info.dims, dims, "{name}");
        let got = f.dequantize_f32(name).unwrap();
        let want: Vec<u32> = e["bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                *w,
                "{name}[{i}]: got {g}, python gguf gives {}",
                f32::from_bits(*w)
            );
        }
        // The narrow variants round the f32 values.
        let bf = f.dequantize_bf16(name).unwrap();
        let h = f.dequantize_f16(name).unwrap();
        for i in 0..got.len() {
            assert_eq!(bf[i], half::bf16::from_f32(got[i]), "{name}[{i}] bf16");
            assert_eq!(h[i], half::f16::from_f32(got[i]), "{name}[{i}] f16");
        }
    }
}

#[test]
fn shapes_are_reported_in_pytorch_order() {
    let f = GgufFile::open(fixture("quants.gguf")).unwrap();
    let t = f.tensor("t_q4_1").unwrap();
    assert_eq!(t.dims, vec![64, 2]);
    assert_eq!(t.shape(), vec![2, 64]);
    assert_eq!(t.n_elements(), 128);
    assert_eq!(t.n_bytes, 4 * 20);
}

#[test]
fn unsupported_type_names_tensor_and_type() {
    let f = GgufFile::open(fixture("quants.gguf")).unwrap();
    assert_eq!(f.tensor("t_q5_0").unwrap().ggml_type, GgmlType::Q5_0);
    let err = f.dequantize_f32("t_q5_0").unwrap_err();
    assert!(
        matches!(
            err,
            GgufError::UnsupportedType {
                ggml_type: GgmlType::Q5_0,
                ..
            }
        ),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("t_q5_0") && msg.contains("Q5_0"), "{msg}");
    let missing = f.dequantize_f32("nope").unwrap_err();
    assert!(
        matches!(missing, GgufError::MissingTensor { .. }),
        "{missing}"
    );
}

fn write_tmp(bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut tmp, bytes).unwrap();
    tmp
}

#[test]
fn bad_files_fail_clearly() {
    let good = std::fs::read(fixture("quants.gguf")).unwrap();

    let mut bytes = good.clone();
    bytes[0] = b'X';
    let err = GgufFile::open(write_tmp(&bytes).path()).unwrap_err();
    assert!(matches!(err, GgufError::BadMagic { .. }), "{err}");

    for version in [1u32, 4, 0x0300_0000] {
        let mut bytes = good.clone();
        bytes[4..8].copy_from_slice(&version.to_le_bytes());
        let err = GgufFile::open(write_tmp(&bytes).path()).unwrap_err();
        assert!(
            matches!(err, GgufError::UnsupportedVersion { version: v, .. } if v == version),
            "{err}"
        );
    }
    // Version 2 has the same layout for little-endian files.
    let mut bytes = good.clone();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let v2 = GgufFile::open(write_tmp(&bytes).path()).unwrap();
    assert_eq!(v2.version(), 2);
    assert_eq!(v2.tensors().len(), 10);

    // Cut inside the last tensor's data: the error names that tensor.
    let cut = &good[..good.len() - 10];
    let err = GgufFile::open(write_tmp(cut).path()).unwrap_err();
    assert!(matches!(err, GgufError::Truncated { .. }), "{err}");
    assert!(err.to_string().contains("t_q5_0"), "{err}");

    // Cut inside the header.
    let err = GgufFile::open(write_tmp(&good[..100]).path()).unwrap_err();
    assert!(matches!(err, GgufError::Truncated { .. }), "{err}");

    let err = GgufFile::open(fixture("does-not-exist.gguf")).unwrap_err();
    assert!(
        matches!(err, GgufError::Io { .. }) && err.to_string().contains("does-not-exist.gguf"),
        "{err}"
    );
}

fn smollm2_path() -> PathBuf {
    sft_testkit::smollm2_gguf()
}

fn sha256_f32(values: &[f32]) -> String {
    let mut h = Sha256::new();
    for v in values {
        h.update(v.to_le_bytes());
    }
    hex::encode(h.finalize())
}

#[test]
fn smollm2_metadata_and_tensors_match_python_gguf() {
    let path = smollm2_path();
    let exp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("smollm2.expected.json")).unwrap())
            .unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.tensors().len() as u64, exp["n_tensors"].as_u64().unwrap());
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    for (key, value) in exp["hparams"].as_object().unwrap() {
        assert_eq!(f.get_f64(key).unwrap(), value.as_f64().unwrap(), "{key}");
    }

    let hp = LlamaHparams::from_gguf(&f).unwrap();
    assert_eq!(
        (hp.block_count, hp.embedding_length, hp.feed_forward_length),
        (30, 576, 1536)
    );
    assert_eq!((hp.head_count, hp.head_count_kv, hp.head_dim()), (9, 3, 64));
    assert_eq!((hp.context_length, hp.vocab_size), (8192, 49152));
    assert_eq!(hp.rope_freq_base, 100000.0);
    assert_eq!(hp.rms_norm_eps, 1e-5f32);
    assert!(hp.tie_word_embeddings, "SmolLM2 has no output.weight");
    assert_eq!((hp.bos_token_id, hp.eos_token_id), (Some(1), Some(2)));
    let cfg = hp.to_hf_config();
    assert_eq!(cfg["num_key_value_heads"], 3);
    assert_eq!(cfg["tie_word_embeddings"], true);

    for (name, e) in exp["tensors"].as_object().unwrap() {
        let info = f.tensor(name).unwrap();
        assert_eq!(info.ggml_type.name(), e["type"].as_str().unwrap(), "{name}");
        let shape: Vec<usize> = e["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(info.shape(), shape, "{name}");
        let values = f.dequantize_f32(name).unwrap();
        let first: Vec<f32> = e["first"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(&values[..8], &first[..], "{name}");
        assert_eq!(sha256_f32(&values), e["sha256"].as_str().unwrap(), "{name}");
        if let Some(want) = e.get("unpermuted_sha256") {
            let n_head = if name.contains("attn_q") {
                hp.head_count
            } else {
                hp.head_count_kv
            };
            let un = sft_gguf::unpermute_qk(&values, n_head, shape[0], shape[1]).unwrap();
            assert_eq!(sha256_f32(&un), want.as_str().unwrap(), "{name} unpermuted");
        }
    }
}

#[test]
fn corrupted_headers_never_panic() {
    let good = std::fs::read(fixture("quants.gguf")).unwrap();
    let f = GgufFile::open(fixture("quants.gguf")).unwrap();
    let header_len = f.data_offset() as usize;
    // Every truncation inside the header is an error.
    for len in 0..header_len {
        let r = GgufFile::from_bytes("cut.gguf", good[..len].to_vec());
        assert!(r.is_err(), "truncated at {len} parsed");
    }
    // Every single-byte corruption of the header parses or fails with an error, never panics,
    // and never allocates beyond what the file could hold.
    let mut errors = 0;
    for pos in 0..header_len {
        for value in [0x00u8, 0xFF, good[pos].wrapping_add(1), 0x7F] {
            let mut bytes = good.clone();
            bytes[pos] = value;
            if let Ok(file) = GgufFile::from_bytes("corrupt.gguf", bytes) {
                for t in file.tensors() {
                    let _ = file.dequantize_f32(&t.name);
                }
            } else {
                errors += 1;
            }
        }
    }
    assert!(
        errors > header_len,
        "corruption was mostly not detected ({errors} errors)"
    );
}
