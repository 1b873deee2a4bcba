//! Error types shared by the engine and components.

use std::fmt;

/// A problem with a pipeline file, with its place.
///
/// `path` is the dotted place in the config (`transforms.spikes.window`); `line` is the
/// 1-based line in the file where it is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending setting, relative to the component until the topology
    /// prefixes it with `<kind>.<id>.`.
    pub path: String,
    /// What is wrong and, where possible, what to do.
    pub message: String,
    /// 1-based line in the pipeline file, when known.
    pub line: Option<usize>,
}

impl ConfigError {
    /// An error at `path` (relative to the component; may be empty for the component itself).
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
            line: None,
        }
    }

    /// The same error with `prefix.` in front of its path.
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.path = if self.path.is_empty() {
            prefix.to_string()
        } else if self.path.starts_with('[') {
            format!("{prefix}{}", self.path)
        } else {
            format!("{prefix}.{}", self.path)
        };
        self
    }

    /// Several errors on one line, `; ` between them (a lone detector's settings, where
    /// there is no file to point into).
    pub fn join(errors: &[ConfigError]) -> String {
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// What `tidegauge check` and `tidegauge run` print for an invalid pipeline from
    /// `origin` (its file name): one `error: origin:line: ...` line per problem, in file
    /// order, then how many were found. Every line ends with a newline.
    pub fn report(origin: &str, errors: &[ConfigError]) -> String {
        let mut errors: Vec<&ConfigError> = errors.iter().collect();
        errors.sort_by_key(|e| (e.line.unwrap_or(usize::MAX), e.path.clone()));
        let mut out = String::new();
        for e in &errors {
            match e.line {
                Some(line) => out.push_str(&format!("error: {origin}:{line}: {e}\n")),
                None => out.push_str(&format!("error: {origin}: {e}\n")),
            }
        }
        let n = errors.len();
        out.push_str(&format!(
            "{origin}: {n} problem{} found; nothing was run\n",
            if n == 1 { "" } else { "s" }
        ));
        out
    }
}

/// Errors show their message with secrets masked ([`crate::redact::scrub`]): a value
/// that does not parse may be a password, a URL may carry a token.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = crate::redact::scrub(&self.message);
        if self.path.is_empty() {
            write!(f, "{message}")
        } else {
            write!(f, "{}: {message}", self.path)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A component could not be built (a file that cannot be opened, a server that refuses).
/// Shown with secrets masked.
#[derive(Debug, thiserror::Error)]
#[error("{}", crate::redact::scrub(message))]
pub struct BuildError {
    /// What went wrong, naming the resource.
    pub message: String,
}

impl BuildError {
    /// A build error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        BuildError {
            message: message.into(),
        }
    }
}

/// A component failed while running. The pipeline stops and reports it. Shown with
/// secrets masked.
#[derive(Debug, thiserror::Error)]
#[error("{}", crate::redact::scrub(message))]
pub struct ComponentError {
    /// What went wrong, naming the resource.
    pub message: String,
    /// The sink's reader went away (a closed pipe, as with `tidegauge run | head`): the
    /// pipeline stops in order, as at the end of its input, and the run is no failure.
    pub reader_gone: bool,
}

impl ComponentError {
    /// A runtime error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        ComponentError {
            message: message.into(),
            reader_gone: false,
        }
    }

    /// An I/O error with what was being done when it happened.
    pub fn io(context: impl fmt::Display, err: std::io::Error) -> Self {
        ComponentError {
            message: format!("{context}: {err}"),
            reader_gone: false,
        }
    }

    /// The reader of a sink's output went away; `what` names the output.
    pub fn reader_gone(what: impl fmt::Display) -> Self {
        ComponentError {
            message: format!("the reader of {what} went away"),
            reader_gone: true,
        }
    }
}

impl From<arrow_schema::ArrowError> for ComponentError {
    fn from(e: arrow_schema::ArrowError) -> Self {
        ComponentError::new(e.to_string())
    }
}
