//! `sft-sweep --dry-run`'s memory column: each cell's peak per device is the largest of its
//! stages' `sft_config::memory` estimates, from the model file's shape (else the spec's
//! `config` or `shape` preset) on the launch's device and ranks; `--device-memory-gib` marks
//! and counts the cells over it; a cell without a shape says why; a bad preset fails at load.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sft_config::memory::{gib, DeviceKind, MemoryEstimate, ModelShape, Parallel, ShapePreset};
use sft_sweep::{Cell, MemoryTarget, SweepSpec};

fn root() -> PathBuf {
    sft_testkit::workspace_root()
}

fn dry_run(spec: &Path, extra: &[&str]) -> String {
    let out = tempfile::tempdir().unwrap();
    let o: Output = Command::new(env!("CARGO_BIN_EXE_sft-sweep"))
        .arg(spec)
        .arg("--out")
        .arg(out.path())
        .arg("--dry-run")
        .args(extra)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn load(path: &Path) -> (SweepSpec, Vec<Cell>) {
    let spec = SweepSpec::from_path(path).unwrap_or_else(|e| panic!("{e}"));
    let cells = spec.expand(path).unwrap_or_else(|e| panic!("{e}"));
    (spec, cells)
}

/// The listing's line of `cell`.
fn line_of<'a>(listing: &'a str, cell: &Cell) -> &'a str {
    listing
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(cell.id.as_str()))
        .unwrap_or_else(|| panic!("no line for {} in\n{listing}", cell.id))
}

/// The largest of the cell's stages' peaks, computed here from `sft_config::memory`.
fn expected_peak(shape: &ModelShape, cell: &Cell, world: u64, device: DeviceKind) -> u64 {
    assert!(!cell.stages.is_empty());
    cell.stages
        .iter()
        .map(|s| {
            let par = Parallel {
                world_size: world,
                zero: s.config.zero,
            };
            MemoryEstimate::new(shape, &s.config, par, device).peak
        })
        .max()
        .unwrap()
}

#[test]
fn dry_run_estimates_each_cell_from_its_model_file_config_or_preset() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = sft_testkit::smollm2_gguf();
    let hf = root().join("fixtures/train/tiny-llama");
    std::fs::create_dir(tmp.path().join("shapes")).unwrap();
    std::fs::copy(
        hf.join("config.json"),
        tmp.path().join("shapes/config.json"),
    )
    .unwrap();
    // Four ranks per cell under Slurm; bf16 with ZeRO-1, so the ranks change the estimate.
    let spec_path = tmp.path().join("mem.toml");
    std::fs::write(
        &spec_path,
        format!(
            r#"format_version = 1
name = "mem"
[[models]]
name = "gguf"
run = {{ model = "{gguf}" }}
[[models]]
name = "hf"
run = {{ model = "{hf}" }}
[[models]]
name = "cfg"
run = {{ model = "/nonexistent/cfg-model" }}
config = "shapes/config.json"
[[models]]
name = "preset"
run = {{ model = "/nonexistent/preset-model" }}
shape = "smollm2-135m"
[[models]]
name = "lost"
run = {{ model = "/nonexistent/lost-model" }}
[[models]]
name = "default"
[train]
dtype = "bf16"
zero = 1
micro_batch_size = 2
max_len = 512
[slurm]
gpus_per_node = 4
[[grid]]
name = "seq"
strategies = ["sequential"]
[[grid]]
name = "long"
strategies = ["multi-task"]
train = {{ max_len = 2048, loss_chunk = 256 }}
"#,
            gguf = gguf.display(),
            hf = hf.display(),
        ),
    )
    .unwrap();
    let (spec, cells) = load(&spec_path);
    let target = MemoryTarget::new(&spec, None, &[]);
    assert_eq!((target.device, target.world_size), (DeviceKind::Cuda, 4));

    let listing = dry_run(&spec_path, &[]);
    let header = listing.lines().next().unwrap();
    for col in ["index", "id", "grids", "peak stage", "per device", "shape"] {
        assert!(header.contains(col), "{header}");
    }
    let smollm2 = ModelShape::from_model_path(&gguf).unwrap();
    let tiny = ModelShape::from_model_path(&hf).unwrap();
    let mut checked = 0;
    for cell in &cells {
        let line = line_of(&listing, cell);
        let (shape, source) = match cell.model.as_str() {
            "gguf" => (smollm2, format!("model {}", gguf.display())),
            "hf" => (tiny, format!("model {}", hf.display())),
            "cfg" => (
                tiny,
                format!("config {}", tmp.path().join("shapes/config.json").display()),
            ),
            "preset" => (smollm2, "preset smollm2-135m".to_string()),
            "lost" => {
                assert!(
                    line.ends_with("? (model /nonexistent/lost-model: not found)"),
                    "{line}"
                );
                continue;
            }
            _ => {
                assert!(line.contains("? (no [run] model"), "{line}");
                continue;
            }
        };
        let four = expected_peak(&shape, cell, 4, DeviceKind::Cuda);
        assert!(
            line.contains(&gib(four)) && line.ends_with(&source),
            "want {} from {source}: {line}",
            gib(four)
        );
        // The stage named is one whose estimate is the peak.
        let stage = line.split_whitespace().nth(3).unwrap();
        assert!(cell.stages.iter().any(|s| s.name == stage), "{line}");
        // Ranks matter (ZeRO-1 shards the master weights and moments over them).
        if cell.model == "gguf" {
            assert_ne!(
                gib(four),
                gib(expected_peak(&shape, cell, 1, DeviceKind::Cuda))
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 8, "2 cells × 4 models with a shape");
    // The long grid's cells need more than the sequential ones.
    let peak_of = |grid: &str| {
        let cell = cells
            .iter()
            .find(|c| c.model == "gguf" && c.grids == [grid])
            .unwrap();
        expected_peak(&smollm2, cell, 4, DeviceKind::Cuda)
    };
    assert!(peak_of("long") > peak_of("seq"));
    assert!(
        listing.contains("4 of 12 cells have no memory estimate"),
        "{listing}"
    );

    // A local run (`--devices cpu`): one CPU process per cell.
    let local = dry_run(&spec_path, &["--devices", "cpu"]);
    let cell = cells.iter().find(|c| c.model == "gguf").unwrap();
    let one = gib(expected_peak(&smollm2, cell, 1, DeviceKind::Cpu));
    assert!(line_of(&local, cell).contains(&one), "want {one}: {local}");
}

#[test]
fn rq4_dry_run_shows_8_rank_zero_1_estimates_and_33b_exceeds_80_gib() {
    let path = root().join("sweeps/rq4.toml");
    let (spec, cells) = load(&path);
    assert_eq!(spec.slurm.as_ref().unwrap().ranks(), 8);
    let listing = dry_run(&path, &["--device-memory-gib", "80"]);
    assert!(
        listing.lines().next().unwrap().contains("> 80 GiB"),
        "{listing}"
    );
    let preset = |n: &str| n.parse::<ShapePreset>().unwrap().shape();
    let mut over = 0;
    for cell in &cells {
        let line = line_of(&listing, cell);
        assert!(cell.stages.iter().all(|s| s.config.zero == 1));
        let peak = expected_peak(&preset(&cell.model), cell, 8, DeviceKind::Cuda);
        assert!(line.contains(&gib(peak)), "want {}: {line}", gib(peak));
        // The checkpoints are not on this machine: the column says where the shape came from.
        let model = format!("/models/{}-hf", cell.model);
        if !Path::new(&model).exists() {
            assert!(line.ends_with(&format!("preset {}", cell.model)), "{line}");
        }
        let exceeds = peak > 80 << 30;
        assert_eq!(line.contains(" OVER "), exceeds, "{line}");
        match cell.model.as_str() {
            // 7B fits with ZeRO-1 on 8 ranks (the spec's comment: 60-70 GB); 33B does not.
            "llama-7b" => assert!(!exceeds && peak > 50 << 30, "{line}"),
            "llama-33b" => assert!(exceeds, "{line}"),
            _ => {}
        }
        over += usize::from(exceeds);
    }
    assert!(over >= 7);
    assert!(
        listing.contains(&format!(
            "{over} of {} cells exceed 80 GiB per device (marked OVER)",
            cells.len()
        )),
        "{listing}"
    );
}

#[test]
fn shape_and_config_errors_fail_at_load_naming_file_and_key() {
    let base = "format_version = 1\nname = \"t\"\n[[grid]]\nname = \"g\"\nstrategies = [\"multi-task\"]\n[[models]]\nname = \"m\"\n";
    let path = Path::new("specs/bad.toml");
    let err = |extra: &str| {
        SweepSpec::from_toml_str(&format!("{base}{extra}"), path)
            .unwrap_err()
            .to_string()
    };
    let e = err("shape = \"llama-8b\"\n");
    assert!(
        e.contains("specs/bad.toml")
            && e.contains("`shape`")
            && e.contains("\"llama-8b\"")
            && e.contains("llama-7b, llama-13b, llama-33b"),
        "{e}"
    );
    let e = err("shape = \"llama-7b\"\nconfig = \"c.json\"\n");
    assert!(
        e.contains("specs/bad.toml") && e.contains("not both"),
        "{e}"
    );
    let e = err("config = \"no/such/config.json\"\n");
    assert!(
        e.contains("specs/bad.toml")
            && e.contains("\"m\"")
            && e.contains("`config`")
            && e.contains("no/such/config.json"),
        "{e}"
    );
    let spec = SweepSpec::from_toml_str(&format!("{base}shape = \"llama-33b\"\n"), path).unwrap();
    assert_eq!(spec.models[0].shape.unwrap().name(), "llama-33b");
}
