//! The memory-mapped GGUF file: header, metadata, tensor directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::{dequant, GgmlType, GgufError, Result, Value};

/// Default data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The GGUF tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions as GGUF stores them: fastest-varying first (`[in, out]` for a linear weight).
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Offset of the data, relative to the start of the data section.
    pub offset: u64,
    /// Absolute offset of the data in the file.
    pub file_offset: u64,
    /// Bytes of data.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Dimensions in PyTorch / HF order (slowest first): `[out, in]` for a linear weight.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A GGUF v2/v3 file, memory-mapped; metadata and directory are parsed on open, tensor data is
/// read (and dequantized) on demand.
pub struct GgufFile {
    path: PathBuf,
    mmap: Storage,
    version: u32,
    metadata: Vec<(String, Value)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .finish()
    }
}

struct Cursor<'a> {
    path: &'a Path,
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let end = (self.pos as u64)
            .checked_add(n)
            .filter(|&e| e <= self.buf.len() as u64);
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end as usize];
                self.pos = end as usize;
                Ok(s)
            }
            None => Err(GgufError::Truncated {
                path: self.path.to_path_buf(),
                what: what(),
                offset: self.pos as u64,
                needed: n,
                file_len: self.buf.len() as u64,
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(what)?;
        let start = self.pos as u64;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 {
            path: self.path.to_path_buf(),
            what: what(),
            offset: start,
        })
    }

    fn value(&mut self, type_id: u32, key: &str, depth: u32) -> Result<Value> {
        let what = || format!("value of {key:?}");
        Ok(match type_id {
            0 => Value::U8(u8::from_le_bytes(self.array(&what)?)),
            1 => Value::I8(i8::from_le_bytes(self.array(&what)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(&what)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => {
                let [b] = self.array::<1>(&what)?;
                match b {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    other => {
                        return Err(GgufError::Invalid {
                            path: self.path.to_path_buf(),
                            message: format!(
                                "metadata key {key:?}: bool byte {other} is neither 0 nor 1"
                            ),
                        })
                    }
                }
            }
            8 => Value::String(self.string(&what)?),
            9 => {
                if depth > 8 {
                    return Err(GgufError::Invalid {
                        path: self.path.to_path_buf(),
                        message: format!("metadata key {key:?}: arrays nested more than 8 deep"),
                    });
                }
                let elem_type = self.u32(&what)?;
                let count = self.u64(&what)?;
                // Each element takes at least one byte: refuse counts the file cannot hold before allocating.
                let remaining = (self.buf.len() - self.pos) as u64;
                if count > remaining {
                    return Err(GgufError::Truncated {
                        path: self.path.to_path_buf(),
                        what: format!("array of {count} elements for {key:?}"),
                        offset: self.pos as u64,
                        needed: count,
                        file_len: self.buf.len() as u64,
                    });
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_type, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(self.array(&what)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            other => {
                return Err(GgufError::UnknownValueType {
                    path: self.path.to_path_buf(),
                    key: key.to_string(),
                    type_id: other,
                })
            }
        })
    }
}

impl GgufFile {
    /// Open and memory-map `path`, parse the header, metadata and tensor directory, and check that
    /// every tensor's data lies inside the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::open(&path).map_err(io)?;
        // SAFETY: the mapping is read-only and private to this struct. Another process truncating or
        // rewriting the file while it is mapped is undefined behaviour; model files are treated as
        // immutable inputs, which is the same assumption llama.cpp and safetensors make.
        #[allow(unsafe_code)]
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, Storage::Mapped(mmap))
    }

    /// Parse a GGUF file held in memory; `name` stands in for the path in errors.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(name.into(), Storage::Owned(bytes))
    }

    fn parse(path: PathBuf, mmap: Storage) -> Result<Self> {
        let mut c = Cursor {
            path: &path,
            buf: &mmap,
            pos: 0,
        };
        let magic = c.array::<4>(&|| "magic".into())?;
        if &magic != b"GGUF" {
            return Err(GgufError::BadMagic {
                path: path.clone(),
                found: magic,
            });
        }
        let version = c.u32(&|| "version".into())?;
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion {
                path: path.clone(),
                version,
            });
        }
        let n_tensors = c.u64(&|| "tensor count".into())?;
        let n_kv = c.u64(&|| "metadata count".into())?;
        let remaining = (mmap.len() - c.pos) as u64;
        if n_kv > remaining || n_tensors > remaining {
            return Err(GgufError::Invalid {
                path: path.clone(),
                message: format!("header declares {n_kv} metadata entries and {n_tensors} tensors, more than the file can hold"),
            });
        }

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut metadata_index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = c.string(&|| format!("key of metadata entry {i}"))?;
            let type_id = c.u32(&|| format!("type of metadata key {key:?}"))?;
            let value = c.value(type_id, &key, 0)?;
            if metadata_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::Invalid {
                    path: path.clone(),
                    message: format!("metadata key {key:?} appears twice"),
                });
            }
            metadata.push((key, value));
        }

        let alignment = match metadata_index
            .get("general.alignment")
            .map(|&i| &metadata[i].1)
        {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_int() {
                Some(a) if a > 0 && (a as u64).is_power_of_two() && a <= 1 << 20 => a as u64,
                _ => {
                    return Err(GgufError::Invalid {
                        path: path.clone(),
                        message: format!("general.alignment is {v}, expected a power of two"),
                    })
                }
            },
        };

        let mut raw = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&|| format!("name of tensor {i}"))?;
            let n_dims = c.u32(&|| format!("dimension count of tensor {name:?}"))?;
            if n_dims > 8 {
                return Err(GgufError::Invalid {
                    path: path.clone(),
                    message: format!("tensor {name:?} has {n_dims} dimensions (at most 8)"),
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&|| format!("dimensions of tensor {name:?}"))?);
            }
            let type_id = c.u32(&|| format!("type of tensor {name:?}"))?;
            let ggml_type =
                GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownGgmlType {
                    path: path.clone(),
                    tensor: name.clone(),
                    type_id,
                })?;
            let offset = c.u64(&|| format!("offset of tensor {name:?}"))?;
            raw.push((name, dims, ggml_type, offset));
        }

        let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = mmap.len() as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        let mut tensor_index = HashMap::with_capacity(raw.len());
        for (name, dims, ggml_type, offset) in raw {
            let n_elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let n_bytes = n_elements.and_then(|n| ggml_type.bytes_for(n)).ok_or_else(|| GgufError::Invalid {
                path: path.clone(),
                message: format!("tensor {name:?} of type {ggml_type} has dims {dims:?}, not a whole number of {}-element blocks", ggml_type.block_size()),
            })?;
            if offset % alignment != 0 {
                return Err(GgufError::Invalid {
                    path: path.clone(),
                    message: format!("tensor {name:?} offset {offset} is not a multiple of the alignment {alignment}"),
                });
            }
            let file_offset = data_offset.checked_add(offset);
            let end = file_offset.and_then(|o| o.checked_add(n_bytes));
            let (Some(file_offset), Some(end)) = (file_offset, end) else {
                return Err(GgufError::Invalid {
                    path: path.clone(),
                    message: format!("tensor {name:?} offset {offset} overflows"),
                });
            };
            if end > file_len {
                return Err(GgufError::Truncated {
                    path: path.clone(),
                    what: format!("data of tensor {name:?} ({ggml_type}, dims {dims:?})"),
                    offset: file_offset,
                    needed: n_bytes,
                    file_len,
                });
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(GgufError::Invalid {
                    path: path.clone(),
                    message: format!("tensor {name:?} appears twice"),
                });
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                file_offset,
                n_bytes,
            });
        }

        Ok(Self {
            path,
            mmap,
            version,
            metadata,
            metadata_index,
            tensors,
            tensor_index,
            alignment,
            data_offset,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset where the tensor data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// All metadata, in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// One metadata value, or [`GgufError::MissingKey`].
    pub fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    fn wrong(&self, key: &str, expected: &'static str, found: &Value) -> GgufError {
        GgufError::WrongValueType {
            path: self.path.clone(),
            key: key.to_string(),
            expected,
            found: found.type_name(),
        }
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong(key, "STRING", v))
    }

    /// A non-negative integer value of any integer type.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_int()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| self.wrong(key, "a non-negative integer", v))
    }

    /// A numeric value as `f64`.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| self.wrong(key, "a number", v))
    }

    /// A bool value.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| self.wrong(key, "BOOL", v))
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>> {
        let v = self.require(key)?;
        let items = v
            .as_array()
            .ok_or_else(|| self.wrong(key, "ARRAY[STRING]", v))?;
        items
            .iter()
            .map(|item| {
                item.as_str()
                    .ok_or_else(|| self.wrong(key, "ARRAY[STRING]", v))
            })
            .collect()
    }

    /// An array of integers (any integer element type).
    pub fn get_int_array(&self, key: &str) -> Result<Vec<i64>> {
        let v = self.require(key)?;
        let items = v
            .as_array()
            .ok_or_else(|| self.wrong(key, "ARRAY[integer]", v))?;
        items
            .iter()
            .map(|item| {
                item.as_int()
                    .and_then(|i| i64::try_from(i).ok())
                    .ok_or_else(|| self.wrong(key, "ARRAY[integer]", v))
            })
            .collect()
    }

    /// The tensor directory, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// One tensor's directory entry, or [`GgufError::MissingTensor`].
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor_index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| GgufError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })
    }

    /// Whether a tensor is present.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensor_index.contains_key(name)
    }

    /// The raw (still quantized) bytes of a tensor.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        // Bounds were checked in `parse`.
        &self.mmap[info.file_offset as usize..(info.file_offset + info.n_bytes) as usize]
    }

    fn checked(&self, name: &str) -> Result<&TensorInfo> {
        let info = self.tensor(name)?;
        if !info.ggml_type.can_dequantize() {
            return Err(GgufError::UnsupportedType {
                path: self.path.clone(),
                tensor: name.to_string(),
                ggml_type: info.ggml_type,
            });
        }
        Ok(info)
    }

    /// A tensor dequantized to `f32`, in GGUF element order (which is row-major for
    /// [`TensorInfo::shape`]). Bit-exact with python `gguf.quants.dequantize`.
    pub fn dequantize_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.checked(name)?;
        dequant::dequantize(
            self.tensor_bytes(info),
            info.ggml_type,
            info.n_elements() as usize,
            name,
        )
    }

    /// A tensor dequantized to `bf16` (through `f32`, rounding to nearest even; exact for BF16 tensors).
    pub fn dequantize_bf16(&self, name: &str) -> Result<Vec<half::bf16>> {
        let info = self.checked(name)?;
        if info.ggml_type == GgmlType::BF16 {
            return Ok(self
                .tensor_bytes(info)
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]))
                .collect());
        }
        Ok(self
            .dequantize_f32(name)?
            .into_iter()
            .map(half::bf16::from_f32)
            .collect())
    }

    /// A tensor dequantized to `f16` (through `f32`, rounding to nearest even; exact for F16 tensors).
    pub fn dequantize_f16(&self, name: &str) -> Result<Vec<half::f16>> {
        let info = self.checked(name)?;
        if info.ggml_type == GgmlType::F16 {
            return Ok(self
                .tensor_bytes(info)
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
                .collect());
        }
        Ok(self
            .dequantize_f32(name)?
            .into_iter()
            .map(half::f16::from_f32)
            .collect())
    }
}
