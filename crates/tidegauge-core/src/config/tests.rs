use super::*;

fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |k| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    }
}

#[test]
fn interpolates_like_a_shell() {
    let e = env(&[("IN", "data.jsonl"), ("EMPTY", "")]);
    assert_eq!(
        interpolate("path = \"${IN}\"\n", &e).unwrap(),
        "path = \"data.jsonl\"\n"
    );
    assert_eq!(interpolate("a = \"${NOPE:-x}\"", &e).unwrap(), "a = \"x\"");
    assert_eq!(interpolate("a = \"${EMPTY:-x}\"", &e).unwrap(), "a = \"x\"");
    assert_eq!(interpolate("a = \"${EMPTY-x}\"", &e).unwrap(), "a = \"\"");
    assert_eq!(
        interpolate("a = \"$$HOME $x\"", &e).unwrap(),
        "a = \"$HOME $x\""
    );
    assert_eq!(interpolate("# ${NOPE}\n", &e).unwrap(), "# ${NOPE}\n");
}

/// Interpolates `template` with `V` set to `value` and reads the result as TOML.
fn with_value(template: &str, value: &str) -> Result<toml::Table, Vec<ConfigError>> {
    let v = value.to_string();
    let env = move |k: &str| (k == "V").then(|| v.clone());
    let text = interpolate(template, &env)?;
    assert_eq!(
        text.lines().count(),
        template.lines().count(),
        "lines added: {text:?}"
    );
    Ok(toml::from_str(&text).unwrap_or_else(|e| panic!("{text:?} is not TOML: {e}")))
}

const NASTY: [&str; 10] = [
    "pass\"word",
    "back\\slash\\n\\u0041",
    "x\"\n[sources.evil]\ntype = \"stdin",
    "tab\tbell\u{7}del\u{7f}",
    "'single' and ''' triple",
    "${NESTED} $$ $",
    "\"\"\" closes",
    "# not a comment",
    "ü ✓ \u{1F600}",
    "",
];

#[test]
fn values_cannot_change_the_structure() {
    for value in NASTY {
        // In double quotes, single- or multi-line: exactly the value, nothing more.
        let t = with_value("a = \"pre ${V} post\" # ${V}\nb = 1\n", value).unwrap();
        assert_eq!(t.len(), 2, "{value:?}: {t:?}");
        assert_eq!(t["a"].as_str(), Some(format!("pre {value} post").as_str()));
        let t = with_value("a = \"\"\"\n${V}\"\"\"\nb = 1\n", value).unwrap();
        assert_eq!((t.len(), t["a"].as_str()), (2, Some(value)), "{value:?}");
        // In single quotes: the value, or an error that does not show it.
        match with_value("a = '${V}'\nb = 1\n", value) {
            Ok(t) => assert_eq!((t.len(), t["a"].as_str()), (2, Some(value))),
            Err(e) => {
                assert!(e[0].message.contains("`V`"), "{e:?}");
                assert!(value.is_empty() || !e[0].message.contains(value));
            }
        }
        match with_value("a = '''${V}'''\nb = 1\n", value) {
            Ok(t) => assert_eq!((t.len(), t["a"].as_str()), (2, Some(value))),
            Err(e) => assert!(e[0].message.contains("`V`"), "{e:?}"),
        }
        // Outside quotes: refused.
        let e = with_value("a = ${V}\nb = 1\n", value).unwrap_err();
        assert!(
            e[0].message.contains("number, a boolean or a date"),
            "{e:?}"
        );
        assert_eq!(e[0].line, Some(1));
    }
    for (bare, expected) in [
        ("42", toml::Value::Integer(42)),
        ("-1.5", toml::Value::Float(-1.5)),
        ("true", toml::Value::Boolean(true)),
    ] {
        let t = with_value("a = ${V}\n", bare).unwrap();
        assert_eq!(t["a"], expected);
    }
    assert!(with_value("a = ${V}\n", "1\n[x]").is_err());
    assert!(with_value("a = ${V}\n", "1 # x").is_err());
}

proptest::proptest! {
    /// Any value in double quotes reads back exactly, and the file keeps its keys
    /// and lines.
    #[test]
    fn any_value_reads_back_exactly(value in "\\PC*|[\"'\\\\\n\\r\\t#=\\[\\]{}$ a-z]*") {
        let t = with_value("a = \"${V}\"\n[b]\nc = \"x${V}\"\n", &value).unwrap();
        proptest::prop_assert_eq!(t.len(), 2);
        proptest::prop_assert_eq!(t["a"].as_str(), Some(value.as_str()));
        let prefixed = format!("x{value}");
        proptest::prop_assert_eq!(t["b"]["c"].as_str(), Some(prefixed.as_str()));
    }
}

#[test]
fn reports_every_unset_variable_with_its_line() {
    let e = env(&[]);
    let errs = interpolate("a = \"${A}\"\nb = 1\nc = \"${C}\" # ${D:-ok}\n", &e).unwrap_err();
    assert_eq!(errs.len(), 2);
    assert_eq!(errs[0].line, Some(1));
    assert!(errs[0].message.contains("`A` is not set"));
    assert_eq!(errs[1].line, Some(3));
    let errs = interpolate("a = \"${1X}\" b = \"${\"", &e).unwrap_err();
    assert_eq!(errs.len(), 2);
}

#[test]
fn toml_syntax_errors_have_a_line() {
    let errs = load("[sources.a]\ntype = \n", &env(&[])).unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, Some(2));
    assert!(errs[0].message.starts_with("not valid TOML"));
}

#[test]
fn structural_errors_are_all_reported() {
    let text = "[sourcez]\n[sources.a]\ninputs = [\"b\"]\n[sinks.c]\ntype = \"nope\"\n[transforms.\"bad id\"]\ntype = 3\ninputs = []\n";
    let errs = load(text, &env(&[])).unwrap().errors;
    let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
    for p in [
        "sourcez",
        "sources.a.type",
        "sources.a.inputs",
        "sinks.c.type",
        "sinks.c.inputs",
        "transforms.bad id",
        "transforms.bad id.type",
        "transforms.bad id.inputs",
    ] {
        assert!(paths.contains(&p), "{p} missing from {paths:?}");
    }
    let a_inputs = errs.iter().find(|e| e.path == "sources.a.inputs").unwrap();
    assert_eq!(a_inputs.line, Some(3));
}
