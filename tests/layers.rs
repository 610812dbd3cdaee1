//! The layers of docs/ARCHITECTURE.md, checked on the source: every `crate::` (in the
//! library) and `fusebox::` (in the binaries) path names a module, and no module names
//! one above it. A module is a top-level file or folder of src/; inside src/backend/,
//! the dispatch (mod.rs and its sibling files) and each backend (cpu/, cuda/, meta/)
//! are modules of their own: the dispatch and the backends name each other (the enum
//! holds their buffers, they implement its trait), and among the backends the order is
//! cpu < cuda < meta (CUDA copies to and from CPU buffers; meta plans with CUDA's
//! workspace sizes).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom to top. A module may name only modules before it in this list.
const LAYERS: &[&str] = &[
    "shape",
    "error",
    "text",
    "rng",
    "hub",
    "metrics",
    "data",
    "tokenize",
    "backend::cpu",
    "backend::cuda",
    "backend::meta",
    "backend",
    "profile",
    "tensor",
    "autograd",
    "ops",
    "optim",
    "nn",
    "models",
    "plan",
    "train",
    "bench",
    "tasks",
    "bin",
];

/// The module a source file belongs to.
fn module_of(rel: &str) -> String {
    let parts: Vec<&str> = rel.split('/').collect();
    match parts.as_slice() {
        ["bin", ..] => "bin".into(),
        ["backend", b, _, ..] if ["cpu", "cuda", "meta"].contains(b) => format!("backend::{b}"),
        [top, ..] => top.trim_end_matches(".rs").into(),
        [] => String::new(),
    }
}

/// Line comments removed (doc comments name modules in prose).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The crate root's re-exports, by the module they come from.
const REEXPORTS: [(&str, &str); 7] = [
    ("Result", "error"),
    ("Error", "error"),
    ("fb_bail", "error"),
    ("DType", "shape"),
    ("Device", "shape"),
    ("Shape", "shape"),
    ("Tensor", "tensor"),
];

/// The items of a brace list (`a, b::{c, d}, e`), split at commas outside nested braces.
fn items(list: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in list.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(list[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(list[start..].trim());
    out.into_iter().filter(|p| !p.is_empty()).collect()
}

/// The module one path names (`models::t5::X` → models, `backend::cuda::..` →
/// backend::cuda, `backend::{cpu, cuda}` → each of them, a root re-export → its module).
fn module_of_path(path: &str, out: &mut BTreeSet<String>) {
    let first = ident_at(path);
    if let Some((_, m)) = REEXPORTS.iter().find(|(n, _)| *n == first) {
        out.insert(m.to_string());
        return;
    }
    let rest = path[first.len()..].trim_start();
    match rest.strip_prefix("::") {
        Some(sub) if first == "backend" => {
            let sub = sub.trim_start();
            if let Some(list) = sub.strip_prefix('{') {
                let end = matching_brace(list);
                for item in items(&list[..end]) {
                    module_of_path(&format!("backend::{item}"), out);
                }
            } else {
                let s = ident_at(sub);
                if ["cpu", "cuda", "meta"].contains(&s) {
                    out.insert(format!("backend::{s}"));
                } else {
                    out.insert(first.to_string());
                }
            }
        }
        _ => {
            out.insert(first.to_string());
        }
    }
}

/// The index of the `}` closing a list that starts just after a `{`.
fn matching_brace(list: &str) -> usize {
    let mut depth = 0i32;
    for (i, c) in list.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    list.len()
}

/// The modules `text` names through `root::` paths (`root::a`, `root::{a, b::{c, d}}`,
/// `root::backend::cuda`, a root re-export such as `root::Tensor`).
fn named(text: &str, root: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let pat = format!("{root}::");
    let mut rest = text;
    while let Some(i) = rest.find(&pat) {
        let before = rest[..i].chars().last();
        rest = &rest[i + pat.len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(list) = rest.strip_prefix('{') {
            let end = matching_brace(list);
            for item in items(&list[..end]) {
                module_of_path(item, &mut out);
            }
        } else {
            module_of_path(rest, &mut out);
        }
    }
    out
}

fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, BTreeSet<String>>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let p = entry.expect("entry").path();
        if p.is_dir() {
            walk(&p, src, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p.strip_prefix(src).expect("under src");
            let rel = rel.to_string_lossy().replace('\\', "/");
            let m = module_of(&rel);
            if m == "lib" {
                continue; // the crate root declares every module
            }
            let text = code(&std::fs::read_to_string(&p).expect("read"));
            // In a binary, `crate::` is the binary itself; the library is `fusebox::`.
            let root = if m == "bin" { "fusebox" } else { "crate" };
            let names = named(&text, root);
            out.entry(m.clone())
                .or_default()
                .extend(names.into_iter().filter(|n| *n != m));
        }
    }
}

/// Fails, naming `what` and listing them, when there are any `found`.
fn assert_none<T: std::fmt::Debug>(what: &str, found: &[T]) {
    assert!(found.is_empty(), "{what}: {found:?}");
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut g = BTreeMap::new();
    walk(&src, &src, &mut g);
    g
}

fn rank(m: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == m)
}

/// The dispatch and its own backends name each other by design (see the module doc).
fn parent_and_child(a: &str, b: &str) -> bool {
    (a == "backend" && b.starts_with("backend::")) || (b == "backend" && a.starts_with("backend::"))
}

#[test]
fn every_module_has_a_layer() {
    let g = graph();
    let unknown: Vec<&String> = g
        .iter()
        .flat_map(|(m, names)| std::iter::once(m).chain(names))
        .filter(|m| rank(m).is_none())
        .collect();
    // Names that are not modules (a type re-exported at the crate root) are fine only
    // if they are the root's re-exports.
    let reexports = [
        "Result", "Error", "DType", "Device", "Shape", "Tensor", "fb_bail",
    ];
    let unknown: Vec<&&String> = unknown
        .iter()
        .filter(|m| !reexports.contains(&m.as_str()))
        .collect();
    assert_none("modules missing from LAYERS", &unknown);
}

#[test]
fn imports_point_down_and_no_two_modules_import_each_other() {
    let g = graph();
    let mut upward = Vec::new();
    for (m, names) in &g {
        let Some(rm) = rank(m) else { continue };
        for n in names {
            let Some(rn) = rank(n) else { continue };
            if rn > rm && !parent_and_child(m, n) {
                upward.push(format!("{m} -> {n}"));
            }
        }
    }
    assert_none("imports from a lower layer to a higher one", &upward);
    let mut mutual = Vec::new();
    for (a, names) in &g {
        for b in names {
            if a < b && g.get(b).is_some_and(|x| x.contains(a)) && !parent_and_child(a, b) {
                mutual.push(format!("{a} <-> {b}"));
            }
        }
    }
    assert_none("modules that import each other", &mutual);
}

/// Models speak ops (and nn, tensor), never a backend: the op vocabulary they need
/// (`UnaryOp`, `MatmulSpec`, ...) comes through `ops`.
#[test]
fn models_never_name_a_backend() {
    let g = graph();
    let named: Vec<&String> = g["models"]
        .iter()
        .filter(|n| n.starts_with("backend"))
        .collect();
    assert!(named.is_empty(), "models name {named:?}");
}

#[test]
fn the_checker_sees_an_upward_import() {
    // The parser on a line of each form: a plain path, a list, a nested backend.
    let text = "use crate::models::t5::T5Config;\nuse crate::{tensor::Tensor, ops};\n\
                let x = crate::backend::cuda::is_available();\n\
                use crate::{a::{b, c}, train::X};\nuse crate::backend::{meta, cpu::Y};\n\
                let d = crate::Device::Cpu;";
    let n = named(text, "crate");
    let want: BTreeSet<String> = [
        "models",
        "tensor",
        "ops",
        "backend::cuda",
        "a",
        "train",
        "backend::meta",
        "backend::cpu",
        "shape",
    ]
    .map(String::from)
    .into();
    assert_eq!(n, want);
    assert_eq!(module_of("backend/cuda/blas.rs"), "backend::cuda");
    assert_eq!(module_of("backend/storage.rs"), "backend");
    assert_eq!(module_of("plan/fit.rs"), "plan");
    assert!(rank("models") > rank("ops") && rank("shape") < rank("error"));
}
