//! One rule for secrets, wherever they could surface (API answers, logs, dead letters,
//! errors, `describe`): a secret is shown as `***`.
//!
//! What is a secret:
//! - the value of a setting whose schema marks it `writeOnly` (the [`Secret`] type of the
//!   components crate, `[admin] token`), through `Option`, `anyOf`, `oneOf`, `allOf` and
//!   `$ref`; every value of a map whose values are so marked (request headers);
//! - the value of a setting, URL query parameter or `key=value` pair whose name says it
//!   is one ([`is_secret_name`]: `password`, `token`, `api_key`, `secret`, ...);
//! - in a URL: the password of its user information (and the user name when there is no
//!   password, as in `https://TOKEN@host/`), the values of query parameters named like
//!   secrets, and path segments that look like generated tokens ([`looks_like_token`]:
//!   webhook URLs carry theirs in the path); the whole path and query of a URL setting
//!   whose schema says so ([`SECRET_PATH`]).
//!
//! Structured output (the parameters the admin API lists) is redacted by its schema.
//! Free text (log lines, error messages, dead letters, the webhook's reply) goes through
//! [`scrub`], which masks every secret value the process has seen in a configuration
//! ([`remember`], done when a pipeline file is loaded) wherever it appears, and then
//! the URLs and `name=value` pairs it can recognise.
//!
//! [`Secret`]: ../../tidegauge_components/secret/struct.Secret.html

use std::borrow::Cow;
use std::sync::RwLock;

use crate::ranges::resolve;
use serde_json::Value;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Schema extension of a URL setting whose path and query are secret as a whole (a
/// webhook URL): `#[schemars(extend("x-secret-path" = true))]`.
pub const SECRET_PATH: &str = "x-secret-path";

/// Secret values shorter than this are not remembered for scrubbing free text (masking
/// every `ab` in every log line would hide more than it protects); they are still
/// masked where their setting is shown.
pub const MIN_REMEMBERED_BYTES: usize = 4;

/// Whether a name (of a setting, query parameter, header or `key=value` pair) says its
/// value is a secret.
pub fn is_secret_name(name: &str) -> bool {
    let leaf = name
        .rsplit(['.', '['])
        .next()
        .unwrap_or(name)
        .to_ascii_lowercase()
        .replace('-', "_");
    // Names of things that name or locate a secret are no secret themselves.
    if ["_env", "_name", "_file", "_path", "_field"]
        .iter()
        .any(|s| leaf.ends_with(s))
    {
        return false;
    }
    const PARTS: [&str; 11] = [
        "password",
        "passwd",
        "secret",
        "token",
        "credential",
        "api_key",
        "apikey",
        "private_key",
        "access_key",
        "authorization",
        "signature",
    ];
    const WHOLE: [&str; 11] = [
        "pwd",
        "pass",
        "key",
        "sig",
        "auth",
        "code",
        "jwt",
        "cookie",
        "session",
        "session_id",
        "sessionid",
    ];
    PARTS.iter().any(|p| leaf.contains(p)) || WHOLE.contains(&leaf.as_str())
}

/// Whether a URL path segment looks like a generated token rather than a name: at least
/// 16 characters of a token alphabet, changing between letters and digits (or from
/// lower to upper case) at least 5 times. `sensor-temperature-01` and `PumpStation12`
/// are names; `T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX`-style webhook keys, hex
/// digests and UUIDs are tokens.
pub fn looks_like_token(segment: &str) -> bool {
    if segment.len() < 16
        || !segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.~+=%".contains(c))
    {
        return false;
    }
    #[derive(PartialEq, Clone, Copy)]
    enum Class {
        Lower,
        Upper,
        Digit,
    }
    let mut changes = 0;
    let mut last = None;
    for c in segment.chars() {
        let class = if c.is_ascii_lowercase() {
            Class::Lower
        } else if c.is_ascii_uppercase() {
            Class::Upper
        } else if c.is_ascii_digit() {
            Class::Digit
        } else {
            continue;
        };
        if let Some(prev) = last
            && prev != class
            && !(prev == Class::Upper && class == Class::Lower)
        {
            changes += 1;
        }
        last = Some(class);
    }
    changes >= 5
}

/// `text` with the secrets of the URL masked (see the module documentation); text that is
/// not a URL with a host comes back unchanged. With `whole_path`, the path and query are
/// masked as a whole.
pub fn url(text: &str, whole_path: bool) -> Cow<'_, str> {
    let Ok(mut u) = url::Url::parse(text) else {
        return Cow::Borrowed(text);
    };
    if u.cannot_be_a_base() || u.host().is_none() {
        return Cow::Borrowed(text);
    }
    let mut changed = false;
    if u.password().is_some() {
        let _ = u.set_password(Some(MASK));
        changed = true;
    } else if !u.username().is_empty() {
        let _ = u.set_username(MASK);
        changed = true;
    }
    if whole_path {
        if u.path() != "/" && !u.path().is_empty() {
            u.set_path(MASK);
            changed = true;
        }
        if u.query().is_some() {
            u.set_query(Some(MASK));
            changed = true;
        }
    } else {
        if let Some(segments) = u.path_segments() {
            let masked: Vec<String> = segments
                .map(|s| {
                    if looks_like_token(s) {
                        changed = true;
                        MASK.to_string()
                    } else {
                        s.to_string()
                    }
                })
                .collect();
            if changed {
                u.set_path(&masked.join("/"));
            }
        }
        if let Some(q) = u.query() {
            let masked = mask_pairs(q, '&');
            if let Cow::Owned(m) = masked {
                u.set_query(Some(&m));
                changed = true;
            }
        }
    }
    if u.fragment().is_some_and(|f| f.contains('=')) {
        let masked = mask_pairs(u.fragment().unwrap_or(""), '&').into_owned();
        u.set_fragment(Some(&masked));
        changed = true;
    }
    if !changed {
        return Cow::Borrowed(text);
    }
    // The crate writes the mask percent-encoded in user information.
    Cow::Owned(u.to_string().replace("%2A%2A%2A", MASK))
}

/// `name=value` pairs separated by `sep` with the values of secret names masked.
fn mask_pairs(text: &str, sep: char) -> Cow<'_, str> {
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    for (i, pair) in text.split(sep).enumerate() {
        if i > 0 {
            out.push(sep);
        }
        match pair.split_once('=') {
            Some((name, value)) if is_secret_name(name) && value != MASK && !value.is_empty() => {
                out.push_str(name);
                out.push('=');
                out.push_str(MASK);
                changed = true;
            }
            _ => out.push_str(pair),
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

/// The parts of `text` that are secret when it is a URL (user information, secret query
/// values, token-like path segments; the whole path and query with `whole_path`), for
/// [`remember`].
pub fn url_secrets(text: &str, whole_path: bool) -> Vec<String> {
    let Ok(u) = url::Url::parse(text) else {
        return Vec::new();
    };
    if u.cannot_be_a_base() || u.host().is_none() {
        return Vec::new();
    }
    let mut out = Vec::new();
    match u.password() {
        Some(p) => out.push(p.to_string()),
        None if !u.username().is_empty() => out.push(u.username().to_string()),
        None => {}
    }
    if whole_path {
        if u.path() != "/" {
            out.push(u.path().trim_start_matches('/').to_string());
        }
        out.extend(u.query().map(str::to_string));
    } else {
        if let Some(segments) = u.path_segments() {
            out.extend(segments.filter(|s| looks_like_token(s)).map(str::to_string));
        }
        out.extend(
            u.query_pairs()
                .filter(|(k, _)| is_secret_name(k))
                .map(|(_, v)| v.into_owned()),
        );
    }
    out
}

/// `name=value` values of secret names in free text (a PostgreSQL connection string).
fn pair_secrets(text: &str) -> Vec<String> {
    text.split([' ', ';', '&', ','])
        .filter_map(|pair| pair.split_once('='))
        .filter(|(name, value)| is_secret_name(name) && !value.is_empty())
        .map(|(_, value)| value.trim_matches(['\'', '"']).to_string())
        .collect()
}

static REMEMBERED: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Remembers a secret value so that [`scrub`] masks it in any text from now on (its
/// JSON-escaped form too, as JSON log lines write it).
pub fn remember(secret: &str) {
    if secret.len() < MIN_REMEMBERED_BYTES || secret == MASK {
        return;
    }
    let mut forms = vec![secret.to_string()];
    if let Ok(json) = serde_json::to_string(secret) {
        let inner = &json[1..json.len() - 1];
        if inner != secret {
            forms.push(inner.to_string());
        }
    }
    // A panicking writer leaves at worst a list missing one entry.
    let mut list = REMEMBERED.write().unwrap_or_else(|p| p.into_inner());
    for f in forms {
        if !list.contains(&f) {
            list.push(f);
        }
    }
    // Longest first, so a secret containing another is masked whole.
    list.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `text` with every remembered secret masked, then the secrets of the URLs and
/// `name=value` pairs in it.
pub fn scrub(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    {
        let list = REMEMBERED.read().unwrap_or_else(|p| p.into_inner());
        for secret in list.iter() {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
    }
    if out.contains("://") {
        out = Cow::Owned(scrub_urls(&out));
    }
    if out.contains('=') {
        let masked = scrub_pairs(&out);
        if let Cow::Owned(m) = masked {
            out = Cow::Owned(m);
        }
    }
    out
}

/// Every `scheme://...` in free text through [`url`].
fn scrub_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme: letters, digits, `+ - .` before `://`.
        let start = after_last(&rest[..at], |c| {
            !(c.is_ascii_alphanumeric() || "+-.".contains(c))
        });
        let mut end = rest[at..]
            .find(|c: char| c.is_whitespace() || "\"'<>`)]}\\".contains(c))
            .map_or(rest.len(), |i| at + i);
        // Sentence punctuation after a URL is not part of it.
        while end > at + 3 && rest[..end].ends_with(['.', ',', ':', ';', '!', '?']) {
            end -= 1;
        }
        out.push_str(&rest[..start]);
        let candidate = &rest[start..end];
        if start < at {
            out.push_str(&url(candidate, false));
        } else {
            out.push_str(candidate);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The byte index just after the last character of `text` matching `stop` (0 if none):
/// the start of the run of characters after it, on a character boundary whatever the
/// width of the character found.
fn after_last(text: &str, stop: impl Fn(char) -> bool) -> usize {
    text.char_indices()
        .rev()
        .find(|&(_, c)| stop(c))
        .map_or(0, |(i, c)| i + c.len_utf8())
}

/// `name=value` and `"name":"value"` pairs in free text with secret names masked.
fn scrub_pairs(text: &str) -> Cow<'_, str> {
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut rest = text;
    while let Some(eq) = rest.find('=') {
        let name_start = after_last(&rest[..eq], |c| {
            !(c.is_ascii_alphanumeric() || "_-".contains(c))
        });
        let name = &rest[name_start..eq];
        let mut value_end = rest[eq + 1..]
            .find(|c: char| c.is_whitespace() || "&;,\"'<>)]}".contains(c))
            .map_or(rest.len(), |i| eq + 1 + i);
        while value_end > eq + 1 && rest[..value_end].ends_with(['.', ':', '!', '?']) {
            value_end -= 1;
        }
        let value = &rest[eq + 1..value_end];
        out.push_str(&rest[..eq + 1]);
        if !name.is_empty() && is_secret_name(name) && !value.is_empty() && value != MASK {
            out.push_str(MASK);
            changed = true;
        } else {
            out.push_str(value);
        }
        rest = &rest[value_end..];
    }
    out.push_str(rest);
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

/// Whether `schema` (a property's, within `root`) marks its value secret: `writeOnly`
/// on it or on what it refers to, through `Option` (`anyOf` with null), `oneOf`, `allOf`.
pub fn schema_marks_secret(root: &Value, schema: &Value) -> bool {
    schema_has(root, schema, &|s| {
        s.get("writeOnly").and_then(Value::as_bool) == Some(true)
    })
}

/// Whether `schema` is a map whose values are all secrets (request headers).
pub fn schema_marks_secret_values(root: &Value, schema: &Value) -> bool {
    object_schema(root, schema).iter().any(|o| {
        o.get("additionalProperties")
            .is_some_and(|a| a.is_object() && schema_marks_secret(root, a))
    })
}

/// Whether `schema` marks a URL whose path and query are secret ([`SECRET_PATH`]).
pub fn schema_marks_secret_path(root: &Value, schema: &Value) -> bool {
    schema_has(root, schema, &|s| {
        s.get(SECRET_PATH).and_then(Value::as_bool) == Some(true)
    })
}

fn schema_has(root: &Value, schema: &Value, mark: &dyn Fn(&Value) -> bool) -> bool {
    schema_options(root, schema, &mut |s| mark(s))
}

/// The object schema a value at `schema` is (through `$ref` and `Option`), if any.
fn object_schema<'a>(root: &'a Value, schema: &'a Value) -> Vec<&'a Value> {
    let mut out = Vec::new();
    schema_options(root, schema, &mut |s| {
        if s.get("properties").is_some() || s.get("additionalProperties").is_some() {
            out.push(s);
        }
        false
    });
    out
}

/// Visits `schema` and every schema it may stand for (what its `$ref` names, the
/// options of its `anyOf`, `oneOf`, `allOf`, recursively) until `visit` says stop
/// (then `true`); at most 256 visits, against cycles.
fn schema_options<'a>(
    root: &'a Value,
    schema: &'a Value,
    visit: &mut dyn FnMut(&'a Value) -> bool,
) -> bool {
    let mut stack = vec![schema];
    let mut seen = 0;
    while let Some(s) = stack.pop() {
        seen += 1;
        if seen > 256 {
            break;
        }
        if visit(s) {
            return true;
        }
        let r = resolve(root, s);
        if !std::ptr::eq(r, s) {
            stack.push(r);
        }
        for key in ["anyOf", "oneOf", "allOf"] {
            if let Some(options) = s.get(key).and_then(Value::as_array) {
                stack.extend(options.iter());
            }
        }
    }
    false
}

/// How a settings value is to be redacted, from its schema.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mark {
    /// Not secret as a whole (URLs and pairs in it are still looked at).
    Plain,
    /// Secret: masked whole.
    Secret,
    /// A URL whose path and query are secret.
    SecretPath,
}

fn mark_of(root: &Value, name: &str, schema: Option<&Value>) -> Mark {
    match schema {
        Some(s) if schema_marks_secret(root, s) => Mark::Secret,
        Some(s) if schema_marks_secret_path(root, s) => Mark::SecretPath,
        _ if is_secret_name(name) => Mark::Secret,
        _ => Mark::Plain,
    }
}

/// Walks `value` (settings as JSON) along `schema` (the config's JSON Schema, `root`),
/// calling `leaf` on every string with its mark. Iterative; nesting beyond 64 levels is
/// treated as secret.
fn walk(root: &Value, value: &mut Value, leaf: &mut dyn FnMut(&mut Value, Mark)) {
    let mut stack: Vec<(&mut Value, Option<&Value>, Mark, usize)> =
        vec![(value, Some(root), Mark::Plain, 0)];
    while let Some((v, schema, mark, depth)) = stack.pop() {
        if depth > 64 {
            leaf(v, Mark::Secret);
            continue;
        }
        match v {
            Value::Object(map) => {
                let objects: Vec<&Value> =
                    schema.map(|s| object_schema(root, s)).unwrap_or_default();
                for (k, child) in map.iter_mut() {
                    let child_schema = objects.iter().find_map(|o| {
                        o.get("properties")
                            .and_then(|p| p.get(k))
                            .or_else(|| o.get("additionalProperties").filter(|a| a.is_object()))
                    });
                    let child_mark = match mark {
                        Mark::Secret => Mark::Secret,
                        _ => mark_of(root, k, child_schema),
                    };
                    stack.push((child, child_schema, child_mark, depth + 1));
                }
            }
            Value::Array(items) => {
                let item_schema = schema
                    .map(|s| resolve(root, s))
                    .and_then(|s| s.get("items"));
                for item in items.iter_mut() {
                    let m = match (mark, item_schema) {
                        (Mark::Secret, _) => Mark::Secret,
                        (_, Some(s)) if schema_marks_secret(root, s) => Mark::Secret,
                        _ => mark,
                    };
                    stack.push((item, item_schema, m, depth + 1));
                }
            }
            _ => leaf(v, mark),
        }
    }
}

/// `settings` (a component's settings as JSON) with every secret masked, following
/// `schema` (its config's JSON Schema).
pub fn settings(schema: &Value, settings: &Value) -> Value {
    let mut out = settings.clone();
    walk(schema, &mut out, &mut |v, mark| match (mark, &*v) {
        (Mark::Secret, Value::Null) => {}
        (Mark::Secret, _) => *v = Value::String(MASK.into()),
        (Mark::SecretPath, Value::String(s)) => *v = Value::String(url(s, true).into_owned()),
        (Mark::Plain, Value::String(s)) => {
            let masked = scrub(s);
            if let Cow::Owned(m) = masked {
                *v = Value::String(m);
            }
        }
        _ => {}
    });
    out
}

/// Remembers every secret in `settings` (see [`remember`]), following `schema`.
pub fn remember_settings(schema: &Value, settings: &Value) {
    let mut copy = settings.clone();
    walk(schema, &mut copy, &mut |v, mark| {
        let Value::String(s) = &*v else { return };
        match mark {
            Mark::Secret => remember(s),
            Mark::SecretPath => url_secrets(s, true).iter().for_each(|p| remember(p)),
            Mark::Plain => {
                url_secrets(s, false).iter().for_each(|p| remember(p));
                pair_secrets(s).iter().for_each(|p| remember(p));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn multibyte_characters_before_names_and_schemes_are_kept_whole() {
        // Found by fuzzing the admin API: a two-byte character just before `name=`
        // or `scheme://` made the scrubber cut inside it and panic.
        for text in [
            "%\u{2d7}ondioti555=ger_ms*5",
            "\u{2d7}token=abc",
            "\u{e9}\u{e9}api_key=s3cret rest",
            "\u{2d7}http://user:pw@host/x",
            "\u{1F600}=\u{1F600}://\u{1F600}",
        ] {
            let out = scrub(text);
            assert!(!out.contains("s3cret") && !out.contains("pw@"), "{out}");
        }
        assert_eq!(scrub("\u{e9}token=abc"), format!("\u{e9}token={MASK}"));
    }

    #[test]
    fn names() {
        for secret in [
            "password",
            "sasl_password",
            "auth.token",
            "api_key",
            "X-Api-Key",
            "access_token",
            "client_secret",
            "key",
            "sig",
            "Authorization",
        ] {
            assert!(is_secret_name(secret), "{secret}");
        }
        for plain in [
            "key_field",
            "token_env",
            "auth_header_name",
            "ca_file",
            "sensor_id",
            "keys",
            "monkey",
            "window",
        ] {
            assert!(!is_secret_name(plain), "{plain}");
        }
    }

    #[test]
    fn tokens_in_paths() {
        for token in [
            "XyZ3abcDEF9ghiJKL2mnoPQR",
            "9f86d081884c7d659a2feaa0c55ad015",
            "123e4567-e89b-12d3-a456-426614174000",
        ] {
            assert!(looks_like_token(token), "{token}");
        }
        for name in [
            "sensor-temperature-01",
            "PumpStation12Sensor3",
            "readings",
            "v1",
            "T00000000",
            "2026-12-04T10:00:00",
        ] {
            assert!(!looks_like_token(name), "{name}");
        }
    }

    #[test]
    fn urls() {
        let u = |s| url(s, false).into_owned();
        assert_eq!(
            u("http://user:hunter2@h:8080/p?x=1"),
            "http://user:***@h:8080/p?x=1"
        );
        assert_eq!(u("https://TOKEN1234@h/"), "https://***@h/");
        assert_eq!(
            u("http://h/s?id=3&api_key=abc&token=def"),
            "http://h/s?id=3&api_key=***&token=***"
        );
        assert_eq!(
            u("https://hooks.example.com/services/T0/B0/XyZ3abcDEF9ghiJKL2mnoPQR"),
            "https://hooks.example.com/services/T0/B0/***"
        );
        assert_eq!(
            u("http://h/sensor-temperature-01"),
            "http://h/sensor-temperature-01"
        );
        assert_eq!(u("not a url"), "not a url");
        assert_eq!(
            url("https://hooks.example.com/a/b?c=d", true),
            "https://hooks.example.com/***?***"
        );
        let s = url_secrets(
            "http://u:pw12@h/x/XyZ3abcDEF9ghiJKL2mnoPQR?key=k123&n=1",
            false,
        );
        assert_eq!(s, ["pw12", "XyZ3abcDEF9ghiJKL2mnoPQR", "k123"]);
    }

    #[test]
    fn free_text() {
        remember("rem3mbered-s3cret");
        let text = "failed for http://u:pw@h/x?api_key=zzz: \
                    rem3mbered-s3cret, password=hunter2 user=bob \"token\":\"t\"";
        let scrubbed = scrub(text);
        assert_eq!(
            scrubbed,
            "failed for http://u:***@h/x?api_key=***: ***, password=*** user=bob \"token\":\"t\""
        );
        assert_eq!(scrub("nothing to see"), "nothing to see");
        // The JSON-escaped form too.
        remember("quote\"in-it");
        assert_eq!(scrub("{\"msg\":\"quote\\\"in-it\"}"), "{\"msg\":\"***\"}");
    }

    #[test]
    fn settings_follow_the_schema_through_option_and_ref() {
        let schema = json!({
            "type": "object",
            "properties": {
                "auth_header_value": { "anyOf": [ { "$ref": "#/$defs/Secret" }, { "type": "null" } ] },
                "headers": { "type": "object", "additionalProperties": { "$ref": "#/$defs/Secret" } },
                "url": { "type": "string", "x-secret-path": true },
                "endpoints": { "type": "array", "items": { "type": "string" } },
                "window": { "type": "integer" },
                "nested": { "$ref": "#/$defs/Nested" }
            },
            "$defs": {
                "Secret": { "type": "string", "writeOnly": true },
                "Nested": { "type": "object", "properties": { "code": { "type": "string" } } }
            }
        });
        let value = json!({
            "auth_header_value": "Bearer abc123",
            "headers": { "X-Api-Key": "k-456", "Accept": "text/plain" },
            "url": "https://hooks.example.com/T1/B2/XyZ3abcDEF9ghiJKL2mnoPQR",
            "endpoints": ["http://u:pw789@h/x?token=t000&id=1"],
            "window": 100,
            "nested": { "code": "c-999" }
        });
        let shown = settings(&schema, &value);
        assert_eq!(
            shown,
            json!({
                "auth_header_value": "***",
                "headers": { "X-Api-Key": "***", "Accept": "***" },
                "url": "https://hooks.example.com/***",
                "endpoints": ["http://u:***@h/x?token=***&id=1"],
                "window": 100,
                "nested": { "code": "***" }
            })
        );
        remember_settings(&schema, &value);
        let all = REMEMBERED.read().unwrap().clone();
        for s in [
            "Bearer abc123",
            "k-456",
            "T1/B2/XyZ3abcDEF9ghiJKL2mnoPQR",
            "pw789",
            "t000",
            "c-999",
        ] {
            assert!(all.iter().any(|r| r == s), "{s} not remembered: {all:?}");
        }
    }
}
