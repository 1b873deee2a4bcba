//! Puts the git commit and the enabled connector features into the binary, for
//! `tidegauge --version` (as ripgrep does).
//!
//! The commit comes from `TIDEGAUGE_BUILD_COMMIT` when set (a build from a source
//! tarball, where there is no repository), else from `git`; without either it is
//! reported as unknown.

use std::path::Path;
use std::process::Command;

/// Connector features of this crate, in the order `--version` lists them.
const FEATURES: [&str; 6] = ["mqtt", "kafka", "nats", "postgres", "parquet", "http"];

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=TIDEGAUGE_BUILD_COMMIT");
    let given = std::env::var("TIDEGAUGE_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = match &given {
        Some(c) => Some((c.trim().to_string(), None)),
        None => git(&["rev-parse", "HEAD"]).map(|hash| {
            let date = git(&["log", "-1", "--format=%cs", "HEAD"]);
            (hash, date)
        }),
    };
    // Build again when HEAD moves: HEAD itself (another branch), the branch's ref (a
    // new commit) and packed refs. Only files that exist: a missing one would make
    // every build rerun this script.
    if given.is_none() {
        let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(git(&["rev-parse", "--git-path", &branch]));
        }
        watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
        for path in watched.into_iter().flatten() {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }

    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let (short, long_commit) = match &commit {
        Some((hash, date)) => {
            let abbrev: String = hash.chars().take(12).collect();
            let dated = match date {
                Some(d) => format!("{hash} ({d})"),
                None => hash.clone(),
            };
            (format!("{version} (rev {abbrev})"), dated)
        }
        None => (version.clone(), "unknown".to_string()),
    };
    let features: Vec<String> = FEATURES
        .iter()
        .map(|f| {
            let on = std::env::var_os(format!("CARGO_FEATURE_{}", f.to_uppercase())).is_some();
            format!("{}{f}", if on { '+' } else { '-' })
        })
        .collect();
    let target = std::env::var("TARGET").unwrap_or_default();
    let profile = std::env::var("PROFILE").unwrap_or_default();
    let long = format!(
        "{version}\ncommit: {long_commit}\nfeatures: {}\ntarget: {target} ({profile} build)",
        features.join(" ")
    );
    println!("cargo:rustc-env=TIDEGAUGE_VERSION_SHORT={short}");
    // The man pages' date: the commit's, so that a build is reproducible.
    let date = commit
        .as_ref()
        .and_then(|(_, d)| d.clone())
        .unwrap_or_default();
    println!("cargo:rustc-env=TIDEGAUGE_BUILD_DATE={date}");
    // Several lines: a file main.rs includes (a rustc-env value is one line).
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    std::fs::write(Path::new(&out).join("long_version.txt"), long).expect("OUT_DIR is writable");
}
