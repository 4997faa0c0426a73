//! Dependencies point down the layers drawn in docs/architecture.md: every `crate::` path in
//! src/ names a module in the same layer or a lower one. A new import against that order
//! fails here, naming the file and line.

use std::path::{Path, PathBuf};

/// Bottom to top. A module may use modules of its own layer and of the layers below.
const LAYERS: &[&[&str]] = &[
    // The wire format, SQL scanning, and leaves with no state of ours.
    &["proto", "sql", "spare", "pool_key", "devdb"],
    &["error"],
    &["config"],
    // What the pools and sessions are built from.
    &[
        "net",
        "auth",
        "identity",
        "admission",
        "stats",
        "audit",
        "log",
    ],
    &["backend"],
    &["relay"],
    // The process: shared state and what serves clients, the console and HTTP.
    &["app", "frontend", "admin", "http", "mcp", "metrics"],
    &["demo", "install_sql", "import_pgbouncer", "main", "lib"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under src/ belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The modules named by `crate::` paths in one line of code, including `crate::{a, b::c}`.
fn crate_paths(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                found.push(name);
            }
        } else {
            found.push(
                rest.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    found
}

fn is_comment(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("//")
}

#[test]
fn dependencies_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        let Some(own) = layer_of(&module) else {
            wrong.push(format!(
                "{}: module `{module}` is in no layer: add it to LAYERS and docs/architecture.md",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if is_comment(line) {
                continue;
            }
            for used in crate_paths(line) {
                if used == module || used.chars().next().is_some_and(|c| c.is_uppercase()) {
                    // Itself, or an item of the crate root (a constant in lib.rs).
                    continue;
                }
                match layer_of(&used) {
                    Some(l) if l <= own => {}
                    Some(_) => wrong.push(format!(
                        "{}:{}: `{module}` uses `{used}`, which is in a higher layer",
                        file.display(),
                        n + 1
                    )),
                    None => wrong.push(format!(
                        "{}:{}: `{used}` is in no layer",
                        file.display(),
                        n + 1
                    )),
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_reads_grouped_and_nested_paths() {
    assert_eq!(
        crate_paths("use crate::{net::Stream, proto};"),
        ["net", "proto"]
    );
    assert_eq!(
        crate_paths("let x: crate::backend::Pool = crate::app::f();"),
        ["backend", "app"]
    );
    assert!(is_comment("    /// see [`crate::metrics`]"));
    assert_eq!(layer_of("relay"), Some(5));
    assert!(layer_of("backend") < layer_of("relay"));
}
