//! Records the commit a release build of pgsluice is made from, for `pgsluice --version`
//! (`unknown` outside a git checkout, as in a source tarball or a Docker build without .git;
//! PGSLUICE_COMMIT overrides it).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PGSLUICE_COMMIT");
    // A commit in the version would rebuild the library and every test binary after each
    // commit: debug builds say so instead.
    if std::env::var("PROFILE").as_deref() != Ok("release") {
        println!("cargo:rustc-env=PGSLUICE_COMMIT=debug build");
        println!("cargo:rerun-if-changed=build.rs");
        return;
    }
    let commit = std::env::var("PGSLUICE_COMMIT").ok().or_else(git_commit);
    let commit = commit.unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=PGSLUICE_COMMIT={commit}");
    // A new commit moves HEAD's branch; a missing path would make cargo rerun every build.
    let watched: Vec<&str> = [".git/HEAD", ".git/refs/heads", ".git/packed-refs"]
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .collect();
    if watched.is_empty() {
        println!("cargo:rerun-if-changed=build.rs");
    }
    for p in watched {
        println!("cargo:rerun-if-changed={p}");
    }
}

fn git_commit() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()?;
    let hash = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !hash.trim().is_empty()).then(|| hash.trim().to_owned())
}
