//! Compiles the c10d shim (`csrc/`) against the libtorch that tch links.
//!
//! libtorch is found as torch-sys 0.24.0's build script finds it (`LIBTORCH`, or
//! `LIBTORCH_USE_PYTORCH=1` asking Python's torch, or `/usr/lib/libtorch.so`; `LIBTORCH_INCLUDE`
//! and `LIBTORCH_LIB` override the include and lib folders), with the same C++ ABI flag
//! (`_GLIBCXX_USE_CXX11_ABI` from Python's torch, else `LIBTORCH_CXX11_ABI`, default 1), so the
//! shim's `std::string`s match libtorch's. Unlike torch-sys it never downloads libtorch.
//!
//! The NCCL half (`csrc/c10d_nccl.cpp`, `USE_C10D_NCCL`) is compiled only when
//! `libtorch_cuda.so`, `nccl.h` and a CUDA toolkit's headers are all found; otherwise a cargo
//! warning says what is missing and the NCCL backend reports `Unsupported` at run time.
//! Set `SFT_DIST_NCCL=0` to leave it out on purpose.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TORCH_VERSION: &str = "2.11.0";

const PYTHON_PRINT_PYTORCH_DETAILS: &str = r"
import torch
from torch.utils import cpp_extension
print('LIBTORCH_VERSION:', torch.__version__.split('+')[0])
print('LIBTORCH_CXX11:', torch._C._GLIBCXX_USE_CXX11_ABI)
for include_path in cpp_extension.include_paths():
  print('LIBTORCH_INCLUDE:', include_path)
for library_path in cpp_extension.library_paths():
  print('LIBTORCH_LIB:', library_path)
";

fn env_var_rerun(name: &str) -> Option<String> {
    println!("cargo:rerun-if-env-changed={name}");
    env::var(name).ok()
}

struct Libtorch {
    /// The folder that holds `include/` and `lib/` (for finding NCCL beside a wheel), if known.
    root: Option<PathBuf>,
    include_dirs: Vec<PathBuf>,
    lib_dir: PathBuf,
    cxx11_abi: String,
}

fn version_check(version: &str) -> Result<(), String> {
    if env_var_rerun("LIBTORCH_BYPASS_VERSION_CHECK").is_some() {
        return Ok(());
    }
    let version = version.trim();
    let version = version.split_once('+').map_or(version, |(v, _)| v);
    if version != TORCH_VERSION {
        return Err(format!(
            "sft-dist expects libtorch {TORCH_VERSION} (the one tch 0.24 links), found {version}; \
             set LIBTORCH_BYPASS_VERSION_CHECK to bypass"
        ));
    }
    Ok(())
}

fn find_libtorch() -> Result<Libtorch, String> {
    if env_var_rerun("LIBTORCH_USE_PYTORCH").is_some() {
        let python = if env::var_os("VIRTUAL_ENV").is_some() {
            "python"
        } else {
            "python3"
        };
        let output = Command::new(python)
            .arg("-c")
            .arg(PYTHON_PRINT_PYTORCH_DETAILS)
            .output()
            .map_err(|e| format!("error running {python}: {e}"))?;
        let mut cxx11_abi = None;
        let mut include_dirs = Vec::new();
        let mut lib_dir = None;
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            if let Some(version) = line.strip_prefix("LIBTORCH_VERSION: ") {
                version_check(version)?;
            }
            match line.strip_prefix("LIBTORCH_CXX11: ") {
                Some("True") => cxx11_abi = Some("1".to_owned()),
                Some("False") => cxx11_abi = Some("0".to_owned()),
                _ => {}
            }
            if let Some(path) = line.strip_prefix("LIBTORCH_INCLUDE: ") {
                include_dirs.push(PathBuf::from(path));
            }
            if let Some(path) = line.strip_prefix("LIBTORCH_LIB: ") {
                lib_dir = Some(PathBuf::from(path));
            }
        }
        let cxx11_abi =
            cxx11_abi.ok_or_else(|| format!("no cxx11 abi returned by python {output:?}"))?;
        let lib_dir = lib_dir.ok_or("python's torch reported no library path")?;
        let root = lib_dir.parent().map(Path::to_path_buf);
        return Ok(Libtorch {
            root,
            include_dirs,
            lib_dir,
            cxx11_abi,
        });
    }
    let libtorch = match env_var_rerun("LIBTORCH") {
        Some(dir) => PathBuf::from(dir),
        None if Path::new("/usr/lib/libtorch.so").exists() => PathBuf::from("/usr"),
        None => {
            return Err(
                "cannot find libtorch: set LIBTORCH (as for tch/torch-sys), or \
                        LIBTORCH_USE_PYTORCH=1 to use Python's torch"
                    .to_owned(),
            )
        }
    };
    let includes =
        env_var_rerun("LIBTORCH_INCLUDE").map_or_else(|| libtorch.clone(), PathBuf::from);
    let lib = env_var_rerun("LIBTORCH_LIB").map_or_else(|| libtorch.clone(), PathBuf::from);
    let version_file = libtorch.join("build-version");
    if let Ok(version) = std::fs::read_to_string(&version_file) {
        version_check(&version)?;
    }
    Ok(Libtorch {
        root: Some(libtorch),
        include_dirs: vec![
            includes.join("include"),
            includes.join("include/torch/csrc/api/include"),
        ],
        lib_dir: lib.join("lib"),
        cxx11_abi: env_var_rerun("LIBTORCH_CXX11_ABI").unwrap_or_else(|| "1".to_owned()),
    })
}

/// Include folders for the NCCL half: nccl.h's folder and the CUDA toolkit's, or why not.
fn find_nccl(torch: &Libtorch) -> Result<Vec<PathBuf>, String> {
    if env_var_rerun("SFT_DIST_NCCL").as_deref() == Some("0") {
        return Err("SFT_DIST_NCCL=0".to_owned());
    }
    if !torch.lib_dir.join("libtorch_cuda.so").exists() {
        return Err(format!(
            "no libtorch_cuda.so in {}",
            torch.lib_dir.display()
        ));
    }
    // The PyPI wheel's NCCL lives beside torch in site-packages (nvidia/nccl).
    let mut nccl_candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = env_var_rerun("NCCL_INCLUDE_DIR") {
        nccl_candidates.push(dir.into());
    }
    if let Some(root) = &torch.root {
        nccl_candidates.push(root.join("../nvidia/nccl/include"));
    }
    if let Some(home) = env_var_rerun("NCCL_HOME") {
        nccl_candidates.push(Path::new(&home).join("include"));
    }
    nccl_candidates.push("/usr/include".into());
    let nccl = nccl_candidates
        .into_iter()
        .find(|d| d.join("nccl.h").exists())
        .ok_or("nccl.h not found (NCCL_INCLUDE_DIR, <libtorch>/../nvidia/nccl/include, NCCL_HOME, /usr/include)")?;

    // ProcessGroupNCCL.hpp includes the CUDA runtime headers, which need a whole toolkit's
    // include folder (crt/host_config.h, CCCL's nv/target); the wheel's nvidia/cu13 runtime
    // headers alone are not enough. Extra folders can be listed in SFT_DIST_CUDA_INCLUDE (':').
    let mut cuda_dirs: Vec<PathBuf> = Vec::new();
    if let Some(extra) = env_var_rerun("SFT_DIST_CUDA_INCLUDE") {
        cuda_dirs.extend(env::split_paths(&extra));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env_var_rerun(var) {
            cuda_dirs.push(Path::new(&home).join("include"));
        }
    }
    cuda_dirs.push("/usr/local/cuda/include".into());
    if let Some(root) = &torch.root {
        cuda_dirs.push(root.join("../nvidia/cu13/include"));
        cuda_dirs.push(root.join("../nvidia/cuda_runtime/include"));
    }
    cuda_dirs.retain(|d| d.is_dir());
    for needed in ["cuda_runtime_api.h", "crt/host_config.h", "nv/target"] {
        if !cuda_dirs.iter().any(|d| d.join(needed).exists()) {
            return Err(format!(
                "no CUDA toolkit header {needed} in {:?} (set CUDA_HOME or SFT_DIST_CUDA_INCLUDE)",
                cuda_dirs
            ));
        }
    }
    let mut dirs = vec![nccl];
    dirs.extend(cuda_dirs);
    Ok(dirs)
}

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rustc-check-cfg=cfg(sft_dist_nccl)");
    let torch = match find_libtorch() {
        Ok(t) => t,
        Err(e) => panic!("sft-dist: {e}"),
    };
    let vendored = Path::new("csrc/third_party/gloo");

    let mut base = cc::Build::new();
    base.cpp(true)
        .pic(true)
        .warnings(false)
        .includes(&torch.include_dirs)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", torch.cxx11_abi))
        .define("GLOG_USE_GLOG_EXPORT", None)
        .define("USE_C10D_GLOO", None)
        // Less debug info, much smaller objects; the shim is a thin layer.
        .debug(false)
        .opt_level(1);

    let nccl = find_nccl(&torch);
    let mut shim = base.clone();
    shim.include(vendored).file("csrc/c10d_shim.cpp");
    if nccl.is_ok() {
        shim.define("USE_C10D_NCCL", None);
    }
    shim.compile("sft_dist_shim");
    match &nccl {
        Ok(dirs) => {
            let mut nccl_build = base.clone();
            nccl_build
                .define("USE_C10D_NCCL", None)
                .define("USE_CUDA", None);
            for d in dirs {
                nccl_build.include(d);
            }
            nccl_build
                .file("csrc/c10d_nccl.cpp")
                .compile("sft_dist_nccl");
            println!("cargo:rustc-cfg=sft_dist_nccl");
        }
        Err(why) => {
            println!("cargo:warning=sft-dist: NCCL backend not compiled: {why}");
        }
    }

    println!("cargo:rustc-link-search=native={}", torch.lib_dir.display());
    if nccl.is_ok() {
        // The shim references ProcessGroupNCCL, so libtorch_cuda is needed; keep it even under
        // --as-needed (its static initialisers register the CUDA backend).
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
    }
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
