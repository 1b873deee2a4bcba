//! The `file` source's paths: patterns expanded, and each file checked to exist, be a
//! file and be readable (at build, and by `tidegauge check`).

use std::fs::File;
use std::io;
use std::path::PathBuf;

use tidegauge_core::{BuildError, ConfigError};

/// Why a listed path cannot be read.
pub(super) enum PathProblem {
    /// Nothing there (a pattern: nothing matches).
    Missing(String),
    /// A directory, or no permission.
    Unreadable(String),
}

impl PathProblem {
    pub(super) fn into_message(self) -> String {
        match self {
            PathProblem::Missing(m) | PathProblem::Unreadable(m) => m,
        }
    }
}

/// Whether the listed path (a literal one, or a pattern) names files that can be read.
fn check_path(p: &str) -> Result<(), PathProblem> {
    if p.contains(['*', '?', '[']) {
        let matched = glob::glob(p)
            .map_err(|e| PathProblem::Unreadable(format!("bad pattern `{p}`: {e}")))?;
        let mut any = false;
        for m in matched.filter_map(Result::ok).filter(|m| m.is_file()) {
            any = true;
            check_file(&m.display().to_string())?;
        }
        return if any {
            Ok(())
        } else {
            Err(PathProblem::Missing(format!("no file matches `{p}`")))
        };
    }
    check_file(p)
}

/// A literal path: it exists, is not a directory, and can be opened for reading.
fn check_file(p: &str) -> Result<(), PathProblem> {
    let meta = std::fs::metadata(p).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => PathProblem::Missing(format!("`{p}` does not exist")),
        _ => PathProblem::Unreadable(format!("cannot read `{p}`: {e}")),
    })?;
    if meta.is_dir() {
        return Err(PathProblem::Unreadable(format!(
            "`{p}` is a directory, not a file (list its files, or a pattern such as `{p}/*.jsonl`)"
        )));
    }
    File::open(p).map_err(|e| PathProblem::Unreadable(format!("cannot read `{p}`: {e}")))?;
    Ok(())
}

/// Expands patterns; literal paths must exist, be files and be readable, patterns must
/// match something.
pub(crate) fn expand(paths: &[String]) -> Result<Vec<PathBuf>, BuildError> {
    let mut files = Vec::new();
    for p in paths {
        let is_pattern = p.contains(['*', '?', '[']);
        if !is_pattern {
            check_file(p).map_err(|e| BuildError::new(e.into_message()))?;
            files.push(PathBuf::from(p));
            continue;
        }
        let mut matched: Vec<PathBuf> = glob::glob(p)
            .map_err(|e| BuildError::new(format!("bad pattern `{p}`: {e}")))?
            .filter_map(Result::ok)
            .filter(|m| m.is_file())
            .collect();
        if matched.is_empty() {
            return Err(BuildError::new(format!("no file matches `{p}`")));
        }
        matched.sort();
        files.extend(matched);
    }
    Ok(files)
}

/// What `tidegauge check` reports about `paths`.
pub(super) fn input_problems(paths: &[String]) -> Vec<tidegauge_core::component::InputProblem> {
    use tidegauge_core::component::InputProblem;
    let mut problems = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let at = format!("paths[{i}]");
        match check_path(p) {
            Ok(()) => {}
            Err(PathProblem::Missing(e)) => {
                problems.push(InputProblem::Missing(ConfigError::new(at, e)))
            }
            Err(PathProblem::Unreadable(e)) => {
                problems.push(InputProblem::Unreadable(ConfigError::new(at, e)))
            }
        }
    }
    problems
}
