//! Loading a pipeline file: environment interpolation, TOML, typed component configs, and
//! errors that name their place (`transforms.spikes.window`) and line.
//!
//! A pipeline file has the tables `sources`, `transforms`, `sinks` (one sub-table per
//! component, with `type` and, for transforms and sinks, `inputs`) and optionally
//! `dead_letter` and `checkpoint`. Every problem found is reported, not only the first.

use std::collections::{BTreeMap, HashMap};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::admin::AdminConfig;
use crate::checkpoint::CheckpointConfig;
use crate::dead_letter::DeadLetterConfig;
use crate::error::ConfigError;
use crate::kind::ComponentKind;
use crate::registry::{self, AnyConfig};

/// One component as written in the file, its settings parsed into its typed config.
#[derive(Debug)]
pub struct ComponentEntry {
    /// Id (the key under `sources`, `transforms` or `sinks`).
    pub id: String,
    /// Kind, from the table it sits in.
    pub kind: ComponentKind,
    /// Registered type name.
    pub type_name: &'static str,
    /// Ids of the components whose output it takes (empty for sources).
    pub inputs: Vec<String>,
    /// Typed settings; `None` when they could not be parsed (the reason is among the
    /// pipeline's errors), so the rest of the graph can still be checked.
    pub config: Option<AnyConfig>,
    /// The settings as written (without `type` and `inputs`), as JSON: what a running
    /// pipeline compares on reload and reports as the component's parameters.
    pub settings: serde_json::Value,
    /// A sink's disk buffer (`buffer = { ... }`), when it has one.
    pub buffer: Option<crate::disk_buffer::DiskBufferConfig>,
}

/// A parsed pipeline file (not yet checked as a graph).
#[derive(Debug)]
pub struct PipelineConfig {
    /// Components in file order: sources, then transforms, then sinks.
    pub components: Vec<ComponentEntry>,
    /// Where records that cannot be processed go.
    pub dead_letter: DeadLetterConfig,
    /// The admin API, when `[admin]` is present.
    pub admin: Option<AdminConfig>,
    /// Checkpoints and acknowledged positions, when `[checkpoint]` is given.
    pub checkpoint: Option<CheckpointConfig>,
    /// Where each setting sits in the file, for error messages.
    pub lines: LineIndex,
    /// Problems found while parsing components; validation adds its own and reports all.
    pub errors: Vec<ConfigError>,
}

/// Maps config paths (`transforms.spikes.window`) to 1-based line numbers.
#[derive(Debug, Default, Clone)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

impl LineIndex {
    /// Line of `path`, or of its nearest enclosing setting that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(&l) = self.lines.get(p) {
                return Some(l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    /// Fills in `line` of errors that have none.
    pub fn locate(&self, errors: &mut [ConfigError]) {
        for e in errors {
            if e.line.is_none() {
                e.line = self.line_of(&e.path);
            }
        }
    }
}

/// Byte offset to 1-based line number.
struct LineStarts(Vec<usize>);

impl LineStarts {
    fn new(text: &str) -> Self {
        let mut v = vec![0];
        v.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineStarts(v)
    }

    fn line(&self, offset: usize) -> usize {
        match self.0.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

/// Where a `${...}` stands in the TOML text, which decides how its value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// Outside any string: a bare value (`workers = ${N}`).
    Bare,
    /// In a `"..."` or `"""..."""` string: the value is escaped.
    Basic,
    /// In a `'...'` or `'''...'''` string, where nothing can be escaped.
    Literal { multiline: bool },
}

/// The value of a variable as it must be written at `place` so that TOML reads back
/// exactly the value, and nothing else: escaped in basic strings (quotes, backslashes and
/// control characters, so no line is added), refused in literal strings when it holds a
/// quote or a control character, and outside strings only a number, boolean or date.
fn written_at(place: Place, value: &str) -> Result<String, String> {
    match place {
        Place::Basic => {
            let mut out = String::with_capacity(value.len());
            for c in value.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\t' => out.push_str("\\t"),
                    '\r' => out.push_str("\\r"),
                    c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
                    c => out.push(c),
                }
            }
            Ok(out)
        }
        Place::Literal { multiline } => {
            let bad = value.chars().any(|c| c.is_control() && c != '\t')
                || if multiline {
                    value.contains("'''") || value.ends_with('\'')
                } else {
                    value.contains('\'')
                };
            if bad {
                Err(
                    "holds a quote or a control character, which a '...' string cannot \
                     hold; write the setting in double quotes"
                        .into(),
                )
            } else {
                Ok(value.to_string())
            }
        }
        Place::Bare => {
            let scalar = !value.is_empty()
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-._:".contains(c))
                && toml::from_str::<toml::Table>(&format!("v = {value}"))
                    .ok()
                    .and_then(|t| t.get("v").cloned())
                    .is_some_and(|v| {
                        matches!(
                            v,
                            toml::Value::Integer(_)
                                | toml::Value::Float(_)
                                | toml::Value::Boolean(_)
                                | toml::Value::Datetime(_)
                        )
                    });
            if scalar {
                Ok(value.to_string())
            } else {
                Err(
                    "outside quotes must be a number, a boolean or a date; put the \
                     reference in double quotes for text"
                        .into(),
                )
            }
        }
    }
}

/// Replaces `${VAR}`, `${VAR:-default}` (default when unset or empty) and `${VAR-default}`
/// (default when unset) with values from `env`; `$$` is a literal `$`. Comments are left
/// alone. A value can never change the file's structure: inside a double-quoted string
/// it is escaped (TOML reads back exactly the value, whatever quotes, backslashes or
/// newlines it holds), inside a single-quoted string one that cannot be written there is
/// an error, and outside strings only a number, boolean or date is accepted. No line is
/// added or removed, so errors keep their line numbers. Every unset variable without a
/// default is reported with its line.
pub fn interpolate(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<ConfigError>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut line = 1;
    // The string the scanner is in, if any.
    let mut string: Option<(Place, bool)> = None; // (place, multi-line)
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        match (string, c) {
            (None, '#') => {
                // A comment, to the end of the line, copied as it is.
                let end = rest.find('\n').unwrap_or(rest.len());
                out.push_str(&rest[..end]);
                rest = &rest[end..];
                continue;
            }
            (None, '"') if rest.starts_with("\"\"\"") => {
                string = Some((Place::Basic, true));
                out.push_str("\"\"\"");
                rest = &rest[3..];
                continue;
            }
            (None, '"') => string = Some((Place::Basic, false)),
            (None, '\'') if rest.starts_with("'''") => {
                string = Some((Place::Literal { multiline: true }, true));
                out.push_str("'''");
                rest = &rest[3..];
                continue;
            }
            (None, '\'') => string = Some((Place::Literal { multiline: false }, false)),
            (Some((Place::Basic, _)), '\\') => {
                // An escape: the backslash and the character after it, as they are.
                let n = rest[1..].chars().next().map_or(0, char::len_utf8);
                if rest[1..].starts_with('\n') {
                    line += 1;
                }
                out.push_str(&rest[..1 + n]);
                rest = &rest[1 + n..];
                continue;
            }
            (Some((Place::Basic, true)), '"') if rest.starts_with("\"\"\"") => {
                // Up to two more quotes may belong to the content (`""""` ends with one).
                let quotes = rest.chars().take_while(|&c| c == '"').count().min(5);
                out.push_str(&rest[..quotes]);
                rest = &rest[quotes..];
                string = None;
                continue;
            }
            (Some((Place::Basic, false)), '"') => string = None,
            (Some((Place::Literal { multiline: true }, _)), '\'') if rest.starts_with("'''") => {
                let quotes = rest.chars().take_while(|&c| c == '\'').count().min(5);
                out.push_str(&rest[..quotes]);
                rest = &rest[quotes..];
                string = None;
                continue;
            }
            (Some((Place::Literal { multiline: false }, _)), '\'') => string = None,
            (Some((_, false)), '\n') => string = None, // unterminated: TOML will say so
            (_, '$') => {
                let place = string.map_or(Place::Bare, |(p, _)| p);
                let after = &rest[1..];
                if let Some(tail) = after.strip_prefix('$') {
                    out.push('$');
                    rest = tail;
                    continue;
                }
                let Some(body) = after.strip_prefix('{') else {
                    out.push('$');
                    rest = after;
                    continue;
                };
                let Some(close) = body
                    .find(['}', '\n'])
                    .filter(|&i| body[i..].starts_with('}'))
                else {
                    errors.push(located(line, "`${` without a closing `}` on its line"));
                    let end = body.find('\n').unwrap_or(body.len());
                    rest = &body[end..];
                    continue;
                };
                let inner = &body[..close];
                rest = &body[close + 1..];
                let (name, default, empty_is_unset) = if let Some(i) = inner.find(":-") {
                    (&inner[..i], Some(&inner[i + 2..]), true)
                } else if let Some(i) = inner.find('-') {
                    (&inner[..i], Some(&inner[i + 1..]), false)
                } else {
                    (inner, None, false)
                };
                let valid = !name.is_empty()
                    && !name.starts_with(|c: char| c.is_ascii_digit())
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    errors.push(located(
                        line,
                        format!(
                            "`${{{inner}}}` is not a valid variable reference (letters, digits and `_` only)"
                        ),
                    ));
                    continue;
                }
                let value = match (env(name), default) {
                    (Some(v), Some(d)) if v.is_empty() && empty_is_unset => d.to_string(),
                    (Some(v), _) => v,
                    (None, Some(d)) => d.to_string(),
                    (None, None) => {
                        errors.push(located(
                            line,
                            format!(
                                "environment variable `{name}` is not set; set it or give a default with `${{{name}:-default}}`"
                            ),
                        ));
                        continue;
                    }
                };
                match written_at(place, &value) {
                    Ok(w) => out.push_str(&w),
                    // The message names the variable, never its value.
                    Err(why) => errors.push(located(line, format!("the value of `{name}` {why}"))),
                }
                continue;
            }
            _ => {}
        }
        if c == '\n' {
            line += 1;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn located(line: usize, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: String::new(),
        message: message.into(),
        line: Some(line),
    }
}

/// The process environment, for [`load`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Top-level tables a pipeline file may have.
const TOP_LEVEL: [&str; 6] = [
    "sources",
    "transforms",
    "sinks",
    "dead_letter",
    "checkpoint",
    "admin",
];

/// Interpolates, parses and type-checks each component's settings. A file that cannot
/// be read as TOML at all is an `Err`; problems in single components are collected in
/// [`PipelineConfig::errors`] so the graph around them can still be checked.
pub fn load(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PipelineConfig, Vec<ConfigError>> {
    let text = interpolate(text, env)?;
    let starts = LineStarts::new(&text);
    let root = DeTable::parse(&text).map_err(|e| {
        vec![ConfigError {
            path: String::new(),
            message: format!("not valid TOML: {}", e.message()),
            line: e.span().map(|s| starts.line(s.start)),
        }]
    })?;
    let root = root.into_inner();

    let mut lines = LineIndex::default();
    index_table(&root, "", &starts, &mut lines);

    let mut errors = Vec::new();
    for (key, _) in root.iter() {
        if !TOP_LEVEL.contains(&key.get_ref().as_ref()) {
            errors.push(ConfigError {
                path: key.get_ref().to_string(),
                message: format!(
                    "unknown top-level table (expected one of: {})",
                    TOP_LEVEL.join(", ")
                ),
                line: Some(starts.line(key.span().start)),
            });
        }
    }

    let dead_letter = match root.get("dead_letter") {
        None => DeadLetterConfig::default(),
        Some(v) => match parse_settings::<DeadLetterConfig>(v.clone()) {
            Ok(c) => {
                errors.extend(range_errors::<DeadLetterConfig>(v, "dead_letter"));
                c
            }
            Err(e) => {
                errors.push(spanned_error("dead_letter", e, &starts));
                DeadLetterConfig::default()
            }
        },
    };

    let admin = match root.get("admin") {
        None => None,
        Some(v) => match parse_settings::<AdminConfig>(v.clone()) {
            Ok(c) => {
                if let Some(t) = &c.token {
                    crate::redact::remember(t);
                }
                errors.extend(range_errors::<AdminConfig>(v, "admin"));
                errors.extend(c.validate().into_iter().map(|e| e.prefixed("admin")));
                Some(c)
            }
            Err(e) => {
                errors.push(spanned_error("admin", e, &starts));
                None
            }
        },
    };

    let checkpoint = match root.get("checkpoint") {
        None => None,
        Some(v) => match parse_settings::<CheckpointConfig>(v.clone()) {
            Ok(c) => {
                errors.extend(range_errors::<CheckpointConfig>(v, "checkpoint"));
                errors.extend(c.validate());
                Some(c)
            }
            Err(e) => {
                errors.push(spanned_error("checkpoint", e, &starts));
                None
            }
        },
    };

    let mut components = Vec::new();
    let mut seen: BTreeMap<String, ComponentKind> = BTreeMap::new();
    for kind in [
        ComponentKind::Source,
        ComponentKind::Transform,
        ComponentKind::Sink,
    ] {
        let table_name = kind.table();
        let Some(table) = root.get(table_name) else {
            continue;
        };
        let DeValue::Table(table) = table.get_ref() else {
            errors.push(ConfigError {
                path: table_name.into(),
                message: format!("must be a table of {} (`[{table_name}.<id>]`)", table_name),
                line: Some(starts.line(table.span().start)),
            });
            continue;
        };
        for (id, body) in table.iter() {
            let id = id.get_ref().to_string();
            let path = format!("{table_name}.{id}");
            if let Some(other) = seen.insert(id.clone(), kind) {
                errors.push(ConfigError::new(
                    path.clone(),
                    format!("the id `{id}` is already used by a {other}; ids must be unique"),
                ));
            }
            if id.is_empty()
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                errors.push(ConfigError::new(
                    path.clone(),
                    "ids may only contain letters, digits, `_` and `-`",
                ));
            }
            let (entry, mut errs) = parse_component(kind, &id, body, &path, &starts);
            components.push(entry);
            errors.append(&mut errs);
        }
    }

    lines.locate(&mut errors);
    Ok(PipelineConfig {
        components,
        dead_letter,
        admin,
        checkpoint,
        lines,
        errors,
    })
}

fn index_table(table: &DeTable<'_>, prefix: &str, starts: &LineStarts, lines: &mut LineIndex) {
    for (k, v) in table.iter() {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        lines
            .lines
            .insert(path.clone(), starts.line(k.span().start));
        if let DeValue::Table(t) = v.get_ref() {
            index_table(t, &path, starts, lines);
        }
    }
}

fn parse_settings<T: serde::de::DeserializeOwned>(
    value: Spanned<DeValue<'_>>,
) -> Result<T, registry::ParseError> {
    serde_path_to_error::deserialize::<_, T>(toml::de::ValueDeserializer::from(value)).map_err(
        |e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            registry::ParseError {
                path: if path == "." { String::new() } else { path },
                message: registry::friendly_serde_message(inner.message().trim_end()),
                span: inner.span(),
            }
        },
    )
}

/// The numbers of a settings table outside the ranges `T`'s schema sets, under `prefix`
/// (`checkpoint`, `sinks.out.buffer`): the same check, from the same source, as a
/// component's settings get.
fn range_errors<T: schemars::JsonSchema>(
    value: &Spanned<DeValue<'_>>,
    prefix: &str,
) -> Vec<ConfigError> {
    let settings: serde_json::Value =
        serde::Deserialize::deserialize(toml::de::ValueDeserializer::from(value.clone()))
            .unwrap_or(serde_json::Value::Null);
    let schema = schemars::schema_for!(T).to_value();
    crate::ranges::check(&schema, &settings)
        .into_iter()
        .map(|e| e.prefixed(prefix))
        .collect()
}

fn spanned_error(prefix: &str, e: registry::ParseError, starts: &LineStarts) -> ConfigError {
    let mut err = ConfigError::new(e.path, e.message).prefixed(prefix);
    err.line = e.span.map(|s| starts.line(s.start));
    err
}

fn parse_component(
    kind: ComponentKind,
    id: &str,
    body: &Spanned<DeValue<'_>>,
    path: &str,
    starts: &LineStarts,
) -> (ComponentEntry, Vec<ConfigError>) {
    let here = |sub: &str, msg: String| ConfigError::new(sub, msg).prefixed(path);
    let mut entry = ComponentEntry {
        id: id.to_string(),
        kind,
        type_name: "?",
        inputs: Vec::new(),
        config: None,
        settings: serde_json::Value::Null,
        buffer: None,
    };
    let DeValue::Table(table) = body.get_ref() else {
        let e = here(
            "",
            format!("must be a table (`[{path}]`) with at least `type`"),
        );
        return (entry, vec![e]);
    };
    let mut errors = Vec::new();

    let type_name = match table.get("type").map(|v| v.get_ref()) {
        Some(DeValue::String(s)) => Some(s.to_string()),
        Some(_) => {
            errors.push(here("type", "must be a string".into()));
            None
        }
        None => {
            errors.push(here(
                "type",
                format!(
                    "missing: every {} needs a `type` (one of: {})",
                    kind.name(),
                    names_of(kind)
                ),
            ));
            None
        }
    };
    let descriptor = type_name.as_deref().and_then(|t| {
        let d = registry::find(kind, t);
        if d.is_none() {
            errors.push(here(
                "type",
                format!(
                    "unknown {} type `{t}` (known: {}){}{}",
                    kind.name(),
                    names_of(kind),
                    kind_hint(kind, t),
                    crate::suggest::hint(
                        t,
                        registry::all()
                            .into_iter()
                            .filter(|d| d.kind == kind)
                            .map(|d| d.type_name)
                    )
                ),
            ));
        }
        d
    });

    let mut inputs = Vec::new();
    match (kind, table.get("inputs")) {
        (ComponentKind::Source, Some(_)) => {
            errors.push(here("inputs", "a source takes no inputs".into()))
        }
        (ComponentKind::Source, None) => {}
        (_, None) => errors.push(here(
            "inputs",
            "missing: list the ids this component reads from, e.g. `inputs = [\"fleet\"]`".into(),
        )),
        (_, Some(v)) => match v.get_ref() {
            DeValue::Array(items) if !items.is_empty() => {
                for (i, item) in items.iter().enumerate() {
                    match item.get_ref() {
                        DeValue::String(s) => inputs.push(s.to_string()),
                        _ => errors.push(here(&format!("inputs[{i}]"), "must be a string".into())),
                    }
                }
            }
            DeValue::Array(_) => {
                errors.push(here("inputs", "must name at least one component".into()))
            }
            _ => errors.push(here(
                "inputs",
                "must be a list of ids, e.g. `inputs = [\"fleet\"]`".into(),
            )),
        },
    }

    let mut settings = table.clone();
    settings.remove("type");
    settings.remove("inputs");
    entry.settings = settings_json(&settings, body.span());
    // From here on, any text the process shows has this component's secrets masked.
    if let Some(d) = descriptor {
        crate::redact::remember_settings(&d.json_schema().to_value(), &entry.settings);
    }
    if kind == ComponentKind::Sink
        && let Some(b) = settings.remove("buffer")
    {
        match parse_settings::<crate::disk_buffer::DiskBufferConfig>(b.clone()) {
            Ok(c) => {
                let prefix = format!("{path}.buffer");
                errors.extend(range_errors::<crate::disk_buffer::DiskBufferConfig>(
                    &b, &prefix,
                ));
                errors.extend(c.validate(&prefix));
                entry.buffer = Some(c);
            }
            Err(e) => errors.push(spanned_error(&format!("{path}.buffer"), e, starts)),
        }
    }
    // An unknown setting (a misspelled parameter) is reported, then left out and the rest
    // parsed again: every unknown setting is found at once, and the component still gets
    // a config, so that its output schema can be checked downstream (the pipeline is
    // refused all the same).
    let mut provisional = false;
    let config = descriptor.and_then(|d| {
        let mut settings = settings;
        loop {
            let value = Spanned::new(body.span(), DeValue::Table(settings.clone()));
            match d.parse(value) {
                Ok(c) => return Some(c),
                Err(e) => {
                    let unknown = e.message.starts_with("unknown field `")
                        && !e.path.is_empty()
                        && !e.path.contains(['.', '['])
                        && settings.contains_key(e.path.as_str());
                    let key = e.path.clone();
                    errors.push(spanned_error(path, e, starts));
                    if !unknown {
                        return None;
                    }
                    settings.remove(key.as_str());
                    provisional = true;
                }
            }
        }
    });

    if let Some(d) = descriptor {
        entry.type_name = d.type_name;
    }
    entry.inputs = inputs;
    entry.config = config.filter(|_| errors.is_empty() || provisional);
    (entry, errors)
}

/// A component's settings table as JSON (`Null` if it cannot be represented).
fn settings_json(settings: &DeTable<'_>, span: std::ops::Range<usize>) -> serde_json::Value {
    let value = Spanned::new(span, DeValue::Table(settings.clone()));
    serde::Deserialize::deserialize(toml::de::ValueDeserializer::from(value))
        .unwrap_or(serde_json::Value::Null)
}

fn names_of(kind: ComponentKind) -> String {
    registry::all()
        .into_iter()
        .filter(|d| d.kind == kind)
        .map(|d| d.type_name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// "... (`stdout` is a sink)" when the name exists under another kind.
fn kind_hint(kind: ComponentKind, name: &str) -> String {
    registry::find_any(name)
        .into_iter()
        .find(|d| d.kind != kind)
        .map(|d| format!("; `{name}` is a {}", d.kind.name()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
