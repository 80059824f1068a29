//! The workspace's libtorch boundary, read from the manifests: no crate in `default-members`
//! (what plain `cargo test` builds) reaches `tch` through its normal, build or dev dependencies,
//! and `sft-run` and `sft-sweep` stay libtorch-free; `sft-local` does link it (so the walk below
//! does find `tch` where it is).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifest(path: &Path) -> toml::Table {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn keys(t: &toml::Table, section: &str) -> Vec<String> {
    t.get(section)
        .and_then(|v| v.as_table())
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default()
}

struct Workspace {
    /// Workspace crate name → its manifest.
    crates: BTreeMap<String, toml::Table>,
    /// Member directory (as in `default-members`) → crate name.
    by_dir: BTreeMap<String, String>,
    default_members: Vec<String>,
}

fn workspace() -> Workspace {
    let root_manifest = manifest(&root().join("Cargo.toml"));
    let ws = root_manifest["workspace"].as_table().unwrap();
    let mut dirs: Vec<String> = vec!["examples".into(), "xtask".into()];
    for e in std::fs::read_dir(root().join("crates")).unwrap() {
        let e = e.unwrap();
        if e.path().join("Cargo.toml").exists() {
            dirs.push(format!("crates/{}", e.file_name().to_string_lossy()));
        }
    }
    let mut crates = BTreeMap::new();
    let mut by_dir = BTreeMap::new();
    for d in dirs {
        let m = manifest(&root().join(&d).join("Cargo.toml"));
        let name = m["package"]["name"].as_str().unwrap().to_string();
        by_dir.insert(d, name.clone());
        crates.insert(name, m);
    }
    let default_members = ws["default-members"]
        .as_array()
        .expect("the workspace sets default-members")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    Workspace {
        crates,
        by_dir,
        default_members,
    }
}

impl Workspace {
    /// Every dependency name `name` builds with: its dev-dependencies (when `with_dev`), then
    /// the normal and build dependencies of everything reached, transitively through the
    /// workspace's own crates.
    fn reach(&self, name: &str, with_dev: bool) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![name.to_string()];
        let mut first = true;
        while let Some(c) = todo.pop() {
            let Some(m) = self.crates.get(&c) else {
                continue;
            };
            let mut deps = keys(m, "dependencies");
            deps.extend(keys(m, "build-dependencies"));
            if first && with_dev {
                deps.extend(keys(m, "dev-dependencies"));
            }
            first = false;
            for d in deps {
                if seen.insert(d.clone()) {
                    todo.push(d);
                }
            }
        }
        seen
    }
}

#[test]
fn default_members_and_the_runner_do_not_reach_libtorch() {
    let ws = workspace();
    assert!(!ws.default_members.is_empty());
    for dir in &ws.default_members {
        let name = ws
            .by_dir
            .get(dir)
            .unwrap_or_else(|| panic!("default member {dir} is not a workspace crate"));
        let reached = ws.reach(name, true);
        for bad in ["tch", "torch-sys", "sft-llama", "sft-train", "sft-local"] {
            assert!(
                !reached.contains(bad),
                "default member {name} reaches {bad}: plain `cargo test` would need libtorch"
            );
        }
    }
    for name in ["sft-run", "sft-sweep"] {
        assert!(ws.default_members.iter().any(|d| ws.by_dir[d] == name));
        assert!(!ws.reach(name, true).contains("tch"), "{name} reaches tch");
    }
    // Every crate that does not reach libtorch is a default member, so plain `cargo test`
    // covers it (a new tch-free crate left out would go untested in a clone without libtorch).
    for (dir, name) in &ws.by_dir {
        let links = ["tch", "torch-sys"]
            .iter()
            .any(|t| ws.reach(name, true).contains(*t));
        assert!(
            links || ws.default_members.contains(dir),
            "{name} ({dir}) does not link libtorch but is not in default-members"
        );
    }
    // The walk finds tch where it is.
    assert!(ws.reach("sft-local", false).contains("tch"));
    assert!(ws.reach("sft-examples", false).contains("sft-local"));
    assert!(
        !ws.default_members
            .iter()
            .any(|d| ws.by_dir[d] == "sft-local"),
        "sft-local links libtorch"
    );
}
