//! The layer check: the data plane's modules import only layers below their own, the
//! stages import no other stage but the shared routed hop, `wire` is bytes only, no
//! module cycle exists, and the crate carries no async runtime or control-plane crate.
//!
//! Read from the sources (`use` lines and `crate::` paths outside comments and test
//! code), so a new module or import is checked without anyone listing it. A new
//! top-level module must be given a layer in [`LAYERS`]: the check refuses one that is
//! not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first; modules of one row are one layer. A module may use a
/// module of its own top-level folder (acyclically), or one of a lower layer.
const LAYERS: &[&[&str]] = &[
    &["wire"],
    &["ids", "drop_reason", "clock"],
    &["frame", "stats"],
    &["queue", "capture"],
    &["tables"],
    &["stage"],
    &["stages"],
    &["pipeline"],
    &["worker"],
    &["datapath"],
    &["port"],
    &["testing"],
    &["fuzzing"],
];

/// What `wire` may use besides itself: it is bytes only.
const WIRE_EXTERNS: &[&str] = &["std", "core", "etherparse"];
/// The stage every stage may share: the routed hop.
const SHARED_STAGE: &str = "l3";
/// Crates the data plane must not depend on.
const FORBIDDEN_DEPENDENCIES: &[&str] = &["tokio", "axum", "kube", "k8s-openapi", "rtnetlink", "hyper"];

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|row| row.contains(&top))
}

/// A module: its path below the crate root (`["stages", "l3"]`; the root is `[]`).
type ModPath = Vec<String>;

/// Source text with comments, string and character literals blanked out, and every
/// item under `#[cfg(test)]` removed (tests may use any layer).
fn code_of(source: &str) -> String {
    let blanked = blank_comments_and_literals(source);
    remove_test_items(&blanked)
}

fn blank_comments_and_literals(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &s[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').map_or(s.len(), |n| i + n);
            i = end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(s.len(), |n| i + n + 2);
            out.push(' ');
            i = end;
        } else if rest.starts_with("r#\"") || rest.starts_with("r\"") {
            let hashes = rest[1..].bytes().take_while(|c| *c == b'#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = 2 + hashes;
            let end = rest[body..].find(&close).map_or(s.len(), |n| i + body + n + close.len());
            out.push_str("\"\"");
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            i = j + 1;
        } else if b[i] == b'\'' {
            // A character literal ('x', '\n', '\''), not a lifetime ('a).
            let lit =
                ["'\\''", "'\\\\'"].iter().find(|l| rest.starts_with(**l)).map(|l| l.len()).or_else(|| {
                    let mut chars = rest[1..].char_indices();
                    match (chars.next(), chars.next()) {
                        (Some((_, '\\')), _) => rest[2..].find('\'').map(|n| n + 3),
                        (Some((_, _)), Some((k, '\''))) => Some(k + 2),
                        _ => None,
                    }
                });
            match lit {
                Some(len) => {
                    out.push_str("' '");
                    i += len;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let c = rest.chars().next().expect("not at the end");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Removes each item that `#[cfg(test)]` marks: to the end of its braces, or of its `;`.
fn remove_test_items(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let (brace, semi) = (item.find('{'), item.find(';'));
        let end = match (brace, semi) {
            (Some(b), Some(s)) if s < b => s + 1,
            (Some(b), _) => {
                let mut depth = 0usize;
                let mut end = item.len();
                for (k, c) in item[b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, Some(s)) => s + 1,
            (None, None) => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// The modules a module's code uses: `crate::a::b`, `super::x` (resolved against
/// `module`), and the members of `use crate::{a, b::c}` groups. Each as the longest
/// prefix that names a module of the crate (`modules`).
fn uses_of(code: &str, module: &ModPath, modules: &BTreeSet<ModPath>) -> BTreeSet<ModPath> {
    let mut used = BTreeSet::new();
    // A `mod.rs` is its folder's module, so for every file `super` is the module's parent.
    let parent: ModPath = module[..module.len().saturating_sub(1)].to_vec();
    let mut paths: Vec<ModPath> = Vec::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent.clone())] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // e.g. `vswitch_sys::` ends in `sys::`, not a path of ours
            }
            if let Some(group) = rest.strip_prefix('{') {
                let body = &group[..group.find('}').unwrap_or(group.len())];
                for member in body.split(',') {
                    paths.push(base.iter().cloned().chain(segments(member.trim())).collect());
                }
            } else {
                paths.push(base.iter().cloned().chain(segments(rest)).collect());
            }
        }
    }
    for p in paths {
        let longest = (1..=p.len()).rev().map(|n| p[..n].to_vec()).find(|m| modules.contains(m));
        if let Some(m) = longest
            && &m != module
        {
            used.insert(m);
        }
    }
    used
}

fn segments(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    for seg in path.split("::") {
        let name: String = seg.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if name.is_empty() || name == "self" {
            break;
        }
        let whole = name.len() == seg.trim_end().len();
        out.push(name);
        if !whole {
            break;
        }
    }
    out
}

/// The extern crates a module's code names at the start of a `use` path (a child
/// module's name there is the module, not a crate).
fn externs_of(code: &str, module: &ModPath, modules: &BTreeSet<ModPath>) -> BTreeSet<String> {
    let is_child =
        |name: &str| modules.contains(&module.iter().cloned().chain([name.to_string()]).collect::<ModPath>());
    code.lines()
        .filter_map(|l| {
            l.trim_start().strip_prefix("use ").or_else(|| l.trim_start().strip_prefix("pub use "))
        })
        .filter_map(|p| p.split("::").next())
        .map(|c| c.trim().trim_start_matches("::").to_string())
        .filter(|c| !["crate", "super", "self"].contains(&c.as_str()) && !is_child(c))
        .collect()
}

struct Source {
    module: ModPath,
    file: PathBuf,
    code: String,
}

fn sources(root: &Path) -> Vec<Source> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("source directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(root).expect("below the root");
            let mut module: ModPath = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            let file = module.pop().expect("a file name");
            if file != "mod.rs" && file != "lib.rs" {
                module.push(file.trim_end_matches(".rs").to_string());
            }
            let text = std::fs::read_to_string(&path).expect("readable source");
            out.push(Source { module, file: path, code: code_of(&text) });
        }
    }
    out.sort_by(|a, b| a.module.cmp(&b.module));
    out
}

/// Every violation of the layering in `sources`, as a sentence each.
fn violations(sources: &[Source]) -> Vec<String> {
    let modules: BTreeSet<ModPath> = sources.iter().map(|s| s.module.clone()).collect();
    let mut found = Vec::new();
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for src in sources {
        let Some(top) = src.module.first() else { continue }; // lib.rs declares the layers
        let name = src.module.join("::");
        let Some(layer) = layer_of(top) else {
            found.push(format!("{name} ({}) is in no layer: add `{top}` to LAYERS", src.file.display()));
            continue;
        };
        let used = uses_of(&src.code, &src.module, &modules);
        for u in &used {
            let other = &u[0];
            let what = u.join("::");
            if other == top {
                // Within a folder: stages are independent of each other but for the routed hop.
                let stage = |m: &ModPath| m.len() >= 2 && m[0] == "stages";
                if stage(&src.module) && stage(u) && u[1] != SHARED_STAGE && src.module[1] != SHARED_STAGE {
                    found.push(format!(
                        "stage {name} uses stage {what}: stages share only stages::{SHARED_STAGE}"
                    ));
                }
                if stage(&src.module) && src.module[1] == SHARED_STAGE && stage(u) {
                    found.push(format!("{name} uses {what}: the shared routed hop uses no stage"));
                }
                edges.entry(src.module.clone()).or_default().insert(u.clone());
                continue;
            }
            match layer_of(other) {
                Some(l) if l < layer => {}
                _ => found.push(format!("{name} (layer {layer}) uses {what}, which is not in a lower layer")),
            }
        }
        if top == "wire" {
            for c in externs_of(&src.code, &src.module, &modules) {
                if !WIRE_EXTERNS.contains(&c.as_str()) {
                    found.push(format!("{name} uses crate {c}: wire is bytes only ({WIRE_EXTERNS:?})"));
                }
            }
        }
    }
    // No cycle among the modules of one folder (between folders the layers forbid them).
    for start in edges.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((m, path)) = stack.pop() {
            for next in edges.get(&m).into_iter().flatten() {
                // Each cycle once: from its smallest module.
                if next == start && path.iter().all(|p| p >= start) {
                    let cycle: Vec<String> = path.iter().chain([next]).map(|p| p.join("::")).collect();
                    found.push(format!("import cycle: {}", cycle.join(" -> ")));
                } else if next != start && seen.insert(next.clone()) {
                    let mut p = path.clone();
                    p.push(next.clone());
                    stack.push((next.clone(), p));
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn the_data_plane_is_layered() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&sources(&root));
    assert!(found.is_empty(), "layering violations (see docs/ARCHITECTURE.md):\n  {}", found.join("\n  "));
}

#[test]
fn the_data_plane_has_no_async_runtime_or_control_plane_crate() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let deps = manifest.split("[dependencies]").nth(1).expect("a [dependencies] table");
    let deps = deps.split("\n[").next().expect("its body");
    for line in deps.lines().map(str::trim).filter(|l| !l.starts_with('#') && l.contains('=')) {
        let name = line.split('=').next().expect("a key").trim();
        assert!(!FORBIDDEN_DEPENDENCIES.contains(&name), "the data plane depends on {name}");
        if name == "vswitch-sys" {
            assert!(
                line.contains("default-features = false") && !line.contains("netlink"),
                "vswitch-sys without its netlink feature (rtnetlink, tokio): {line}"
            );
        }
    }
}

/// The check itself finds what it must: an upward import, a stage using a stage, a
/// cycle, an unknown module, a crate in `wire` — and not what is in comments, strings
/// or tests.
#[test]
fn the_check_finds_each_kind_of_violation() {
    let src = |module: &[&str], code: &str| Source {
        module: module.iter().map(|s| s.to_string()).collect(),
        file: PathBuf::from(module.join("/")),
        code: code_of(code),
    };
    let clean = [
        src(
            &["wire"],
            "use etherparse::X;\n// use crate::tables::Tables;\nconst S: &str = \"crate::stages\";",
        ),
        src(&["tables"], "use crate::wire::MacAddr;\n#[cfg(test)]\nmod tests { use crate::pipeline::X; }"),
        src(&["stages", "l3"], "use crate::tables::Tables;"),
        src(&["stages", "nat"], "use super::l3::{self, Ttl};\nuse crate::{tables, wire::Error};"),
    ];
    assert_eq!(violations(&clean), Vec::<String>::new());
    let bad = [
        src(&["wire"], "use crate::tables::Tables;\nuse serde::Serialize;"),
        src(&["tables"], "use crate::wire::X;"),
        src(&["stages", "l3"], "use crate::stages::nat::x;"),
        src(&["stages", "nat"], "use super::l3;\nfn f() { crate::stages::l2::g() }"),
        src(&["stages", "l2"], "use crate::pipeline::Pipeline;"),
        src(&["pipeline"], ""),
        src(&["mystery"], ""),
    ];
    let found = violations(&bad);
    let expect = [
        "wire (layer 0) uses tables",
        "wire uses crate serde",
        "stage stages::nat uses stage stages::l2",
        "stages::l3 uses stages::nat: the shared routed hop",
        "stages::l2 (layer 6) uses pipeline",
        "import cycle: stages::l3 -> stages::nat -> stages::l3",
        "mystery (mystery) is in no layer",
    ];
    for e in expect {
        assert!(found.iter().any(|f| f.starts_with(e)), "expected {e:?} in {found:#?}");
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");
}
