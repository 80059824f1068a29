//! Device selection shared by every binary: `--device auto|cpu|cuda|cuda:N`.
//!
//! Why this module exists: the PyPI `torch` wheel ships CUDA kernels in `libtorch_cuda.so`, but
//! our binaries reference no symbol from it, so the linker's `--as-needed` drops it and
//! `tch::Cuda::is_available()` silently reports `false` on a GPU machine. [`DeviceSpec::resolve`]
//! therefore loads `libtorch_cuda.so` (with `RTLD_GLOBAL`, so its static initialisers register the
//! CUDA backend) before asking libtorch about CUDA. Every library that needs a device takes a
//! [`tch::Device`] argument; only binaries turn a user's string into one, through this module.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// Errors from device selection.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The `--device` string is not `auto`, `cpu`, `cuda` or `cuda:N`.
    #[error("invalid device `{0}`: expected auto, cpu, cuda or cuda:N")]
    Parse(String),
    /// CUDA was asked for but libtorch reports no usable GPU.
    #[error("device `{requested}` requested but CUDA is not available ({why})")]
    CudaUnavailable {
        /// The device string the user gave.
        requested: String,
        /// What went wrong while enabling CUDA.
        why: String,
    },
    /// The `--dtype` string is not one of f32, bf16, f16.
    #[error("invalid dtype `{0}`: expected f32, bf16 or f16")]
    DType(String),
    /// `cuda:N` with N beyond the visible devices.
    #[error("device cuda:{index} requested but only {count} CUDA device(s) are visible")]
    NoSuchGpu {
        /// The requested ordinal.
        index: usize,
        /// How many devices libtorch sees.
        count: usize,
    },
}

/// A device request as the user wrote it, before it is checked against the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The first CUDA device when one is available, else the CPU.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceError::Parse(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceSpec {
    /// Turn the request into a concrete device, enabling CUDA first when it could be used.
    pub fn resolve(self) -> Result<tch::Device, DeviceError> {
        match self {
            Self::Cpu => Ok(tch::Device::Cpu),
            Self::Auto => {
                let cuda = enable_cuda();
                if cuda.is_ok() && tch::Cuda::is_available() {
                    Ok(tch::Device::Cuda(0))
                } else {
                    Ok(tch::Device::Cpu)
                }
            }
            Self::Cuda(index) => {
                enable_cuda().map_err(|why| DeviceError::CudaUnavailable {
                    requested: self.to_string(),
                    why,
                })?;
                if !tch::Cuda::is_available() {
                    return Err(DeviceError::CudaUnavailable {
                        requested: self.to_string(),
                        why: "libtorch_cuda is loaded but libtorch sees no GPU (driver missing or CUDA_VISIBLE_DEVICES empty?)".into(),
                    });
                }
                let count = tch::Cuda::device_count().max(0) as usize;
                if index >= count {
                    return Err(DeviceError::NoSuchGpu { index, count });
                }
                Ok(tch::Device::Cuda(index))
            }
        }
    }
}

/// A model dtype as the user writes it (`--dtype f32|bf16|f16`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

impl FromStr for DType {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" | "float" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "fp16" | "float16" | "half" => Ok(Self::F16),
            _ => Err(DeviceError::DType(s.to_string())),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
        })
    }
}

impl DType {
    /// The libtorch element kind.
    pub fn kind(self) -> tch::Kind {
        match self {
            Self::F32 => tch::Kind::Float,
            Self::Bf16 => tch::Kind::BFloat16,
            Self::F16 => tch::Kind::Half,
        }
    }
}

/// Load `libtorch_cuda.so` into the process so that libtorch registers its CUDA backend.
///
/// Idempotent and cheap after the first call. Returns why CUDA could not be enabled, e.g. on a
/// CPU-only libtorch, where the library does not exist.
pub fn enable_cuda() -> Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let mut errors = Vec::new();
            for name in ["libtorch_cuda.so", "libtorch_hip.so"] {
                match open_global(name) {
                    Ok(()) => return Ok(()),
                    Err(e) => errors.push(e),
                }
            }
            Err(errors.join("; "))
        })
        .clone()
}

#[allow(unsafe_code)]
fn open_global(name: &str) -> Result<(), String> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // Prefer the copy next to the libtorch we are linked against, so that a second libtorch on
    // the loader path can never be mixed in.
    let candidates: Vec<String> = match libtorch_lib_dir() {
        Some(dir) => vec![format!("{dir}/{name}"), name.to_string()],
        None => vec![name.to_string()],
    };
    let mut last = String::new();
    for candidate in candidates {
        // SAFETY: loading libtorch's own CUDA library runs its static initialisers, which only
        // register kernels with the dispatcher that is already loaded in this process.
        match unsafe { Library::open(Some(&candidate), RTLD_NOW | RTLD_GLOBAL) } {
            Ok(lib) => {
                // Keep it loaded for the life of the process.
                std::mem::forget(lib);
                return Ok(());
            }
            Err(e) => last = format!("{candidate}: {e}"),
        }
    }
    Err(last)
}

/// The directory holding the `libtorch_cpu.so` this process has loaded, read from
/// `/proc/self/maps`.
pub fn libtorch_lib_dir() -> Option<String> {
    // Make sure libtorch is loaded before looking for it.
    let _ = tch::get_num_threads();
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| std::path::Path::new(p).parent())
        .map(|d| d.display().to_string())
}

/// The version of the loaded libtorch, read from the files that ship beside it
/// (`torch/version.py` in a PyPI wheel, `build-version` in a libtorch archive).
pub fn libtorch_version() -> Option<String> {
    let lib = std::path::PathBuf::from(libtorch_lib_dir()?);
    let root = lib.parent()?;
    if let Ok(s) = std::fs::read_to_string(root.join("build-version")) {
        return Some(s.trim().to_string());
    }
    let py = std::fs::read_to_string(root.join("version.py")).ok()?;
    // `__version__ = '2.11.0+cu130'`: the text between the first pair of quotes.
    let line = py.lines().find(|l| l.starts_with("__version__"))?;
    line.split(['\'', '"']).nth(1).map(str::to_string)
}

/// One GPU as the CUDA driver describes it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GpuInfo {
    /// Ordinal.
    pub index: usize,
    /// Marketing name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Total memory in bytes.
    pub total_memory_bytes: u64,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Whether bf16 matrix math is natively supported (compute capability ≥ 8.0).
    pub bf16: bool,
}

/// Which native bf16 instructions this CPU has, detected at run time (never assumed: the
/// project's own machines differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct CpuBf16 {
    /// x86 AVX-512 BF16 (`avx512_bf16`).
    pub avx512_bf16: bool,
    /// x86 AMX tiles with bf16 (`amx_bf16`, Sapphire Rapids and later).
    pub amx_bf16: bool,
    /// Arm's BF16 extension (`bf16`).
    pub arm_bf16: bool,
}

impl CpuBf16 {
    /// Probes this CPU (`std::arch` feature detection; AMX from `/proc/cpuinfo`, which `std`
    /// does not detect yet).
    pub fn detect() -> CpuBf16 {
        #[allow(unused_mut)]
        let mut c = CpuBf16::default();
        #[cfg(target_arch = "x86_64")]
        {
            c.avx512_bf16 = std::arch::is_x86_feature_detected!("avx512bf16");
            c.amx_bf16 = std::fs::read_to_string("/proc/cpuinfo")
                .map(|t| {
                    t.lines()
                        .find(|l| l.starts_with("flags"))
                        .is_some_and(|l| l.split_whitespace().any(|f| f == "amx_bf16"))
                })
                .unwrap_or(false);
        }
        #[cfg(target_arch = "aarch64")]
        {
            c.arm_bf16 = std::arch::is_aarch64_feature_detected!("bf16");
        }
        c
    }

    /// Whether bf16 matrix products run natively (otherwise libtorch converts, and bf16 is
    /// slower than f32).
    pub fn native(self) -> bool {
        self.avx512_bf16 || self.amx_bf16 || self.arm_bf16
    }
}

/// What this process sees: libtorch, threads, CUDA and each GPU.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EnvReport {
    /// libtorch version, when it could be read.
    pub libtorch_version: Option<String>,
    /// Where the loaded libtorch lives.
    pub libtorch_lib_dir: Option<String>,
    /// `LD_LIBRARY_PATH` as this process saw it.
    pub ld_library_path: Option<String>,
    /// Intra-op threads libtorch will use.
    pub num_threads: i32,
    /// Result of loading `libtorch_cuda.so`.
    pub cuda_library: Result<(), String>,
    /// `tch::Cuda::is_available()` after that.
    pub cuda_available: bool,
    /// `tch::Cuda::cudnn_is_available()`.
    pub cudnn_available: bool,
    /// Visible GPUs.
    pub gpus: Vec<GpuInfo>,
    /// The CPU's native bf16 support.
    pub cpu_bf16: CpuBf16,
}

impl EnvReport {
    /// Probe the machine. Loads `libtorch_cuda.so` as a side effect.
    pub fn probe() -> Self {
        let cuda_library = enable_cuda();
        let cuda_available = tch::Cuda::is_available();
        let count = if cuda_available {
            tch::Cuda::device_count().max(0) as usize
        } else {
            0
        };
        Self {
            libtorch_version: libtorch_version(),
            libtorch_lib_dir: libtorch_lib_dir(),
            ld_library_path: std::env::var("LD_LIBRARY_PATH").ok(),
            num_threads: tch::get_num_threads(),
            cuda_library,
            cuda_available,
            cudnn_available: cuda_available && tch::Cuda::cudnn_is_available(),
            gpus: (0..count).filter_map(gpu_info).collect(),
            cpu_bf16: CpuBf16::detect(),
        }
    }
}

impl fmt::Display for EnvReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "libtorch version : {}",
            self.libtorch_version.as_deref().unwrap_or("unknown")
        )?;
        writeln!(
            f,
            "libtorch lib dir : {}",
            self.libtorch_lib_dir.as_deref().unwrap_or("unknown")
        )?;
        writeln!(
            f,
            "LD_LIBRARY_PATH  : {}",
            self.ld_library_path.as_deref().unwrap_or("(unset)")
        )?;
        writeln!(f, "cpu threads      : {}", self.num_threads)?;
        let b = self.cpu_bf16;
        writeln!(
            f,
            "cpu bf16         : {} (avx512_bf16 {}, amx_bf16 {}, arm bf16 {})",
            if b.native() { "native" } else { "emulated" },
            b.avx512_bf16,
            b.amx_bf16,
            b.arm_bf16
        )?;
        match &self.cuda_library {
            Ok(()) => writeln!(f, "libtorch_cuda    : loaded")?,
            Err(e) => writeln!(f, "libtorch_cuda    : not loaded ({e})")?,
        }
        writeln!(f, "cuda available   : {}", self.cuda_available)?;
        writeln!(f, "cudnn available  : {}", self.cudnn_available)?;
        for g in &self.gpus {
            writeln!(
                f,
                "gpu {}            : {} | {:.1} GiB | sm_{}{} | bf16 {}",
                g.index,
                g.name,
                g.total_memory_bytes as f64 / (1u64 << 30) as f64,
                g.compute_capability.0,
                g.compute_capability.1,
                if g.bf16 { "yes" } else { "no" }
            )?;
        }
        Ok(())
    }
}

/// Makes glibc's `malloc` serve every allocation of at least `threshold` bytes with its own
/// `mmap` and return it to the system when freed (`M_MMAP_THRESHOLD`; fixing it also turns off
/// glibc's sliding threshold). libtorch's CPU tensors are such allocations: under the default,
/// freed activations stay in the heap as fragments and a training process's peak RSS grows by
/// up to a quarter over its live tensors (measured in `docs/benchmarks.md`, "Training memory").
/// Returns whether the setting took (always false off glibc).
#[allow(unsafe_code)]
pub fn return_large_frees_to_os(threshold: usize) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let t = i32::try_from(threshold).unwrap_or(i32::MAX);
        // SAFETY: mallopt only changes malloc's tuning parameters; any value is accepted or
        // rejected (return 0) by glibc, and no pointer is involved.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, t) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = threshold;
        false
    }
}

/// The memory a training run on `device` can use: the total memory of a CUDA device (from the
/// driver), or the host's `MemAvailable` (from `/proc/meminfo`) for the CPU. `None` when it
/// cannot be read.
pub fn device_memory_bytes(device: tch::Device) -> Option<u64> {
    match device {
        tch::Device::Cuda(i) => gpu_info(i).map(|g| g.total_memory_bytes),
        tch::Device::Cpu => std::fs::read_to_string("/proc/meminfo")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024),
        _ => None,
    }
}

/// Ask the CUDA driver API (`libcuda.so.1`) for a device's name, memory and compute capability.
/// tch exposes none of these, and the driver API's signatures are stable across CUDA versions.
#[allow(unsafe_code)]
fn gpu_info(index: usize) -> Option<GpuInfo> {
    use libloading::{Library, Symbol};
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuDeviceGet = unsafe extern "C" fn(*mut i32, i32) -> i32;
    type CuDeviceGetName = unsafe extern "C" fn(*mut std::os::raw::c_char, i32, i32) -> i32;
    type CuDeviceTotalMem = unsafe extern "C" fn(*mut usize, i32) -> i32;
    type CuDeviceGetAttribute = unsafe extern "C" fn(*mut i32, i32, i32) -> i32;
    // SAFETY: the symbols are the documented CUDA driver API entry points with these C
    // signatures; every out-pointer points to a live local of the right type and size.
    unsafe {
        let lib = Library::new("libcuda.so.1").ok()?;
        let init: Symbol<CuInit> = lib.get(b"cuInit").ok()?;
        let get: Symbol<CuDeviceGet> = lib.get(b"cuDeviceGet").ok()?;
        let name_fn: Symbol<CuDeviceGetName> = lib.get(b"cuDeviceGetName").ok()?;
        let mem_fn: Symbol<CuDeviceTotalMem> = lib.get(b"cuDeviceTotalMem_v2").ok()?;
        let attr_fn: Symbol<CuDeviceGetAttribute> = lib.get(b"cuDeviceGetAttribute").ok()?;
        if init(0) != 0 {
            return None;
        }
        let mut dev = 0i32;
        if get(&mut dev, index as i32) != 0 {
            return None;
        }
        let mut buf = [0 as std::os::raw::c_char; 256];
        name_fn(buf.as_mut_ptr(), buf.len() as i32, dev);
        let name = std::ffi::CStr::from_ptr(buf.as_ptr())
            .to_string_lossy()
            .into_owned();
        let mut mem = 0usize;
        mem_fn(&mut mem, dev);
        let (mut major, mut minor) = (0i32, 0i32);
        // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76.
        attr_fn(&mut major, 75, dev);
        attr_fn(&mut minor, 76, dev);
        std::mem::forget(lib);
        Some(GpuInfo {
            index,
            name,
            total_memory_bytes: mem as u64,
            compute_capability: (major, minor),
            bf16: major >= 8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_strings() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!("CPU".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert_eq!("BF16".parse::<DType>().unwrap().kind(), tch::Kind::BFloat16);
        assert_eq!("fp16".parse::<DType>().unwrap(), DType::F16);
        assert!("int8"
            .parse::<DType>()
            .unwrap_err()
            .to_string()
            .contains("int8"));
    }

    #[test]
    fn cpu_always_resolves() {
        assert_eq!(DeviceSpec::Cpu.resolve().unwrap(), tch::Device::Cpu);
    }

    #[test]
    fn probe_reports_the_loaded_libtorch() {
        let r = EnvReport::probe();
        assert!(r.libtorch_lib_dir.is_some(), "{r}");
        assert!(r.num_threads >= 1);
        // The PyPI wheel we set up is a CUDA build: its CUDA library must load even without a GPU.
        if let Some(v) = &r.libtorch_version {
            assert!(v.starts_with("2.11"), "unexpected libtorch {v}");
        }
    }
}
