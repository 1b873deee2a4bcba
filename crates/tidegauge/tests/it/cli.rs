//! What a user reads: `check` errors, `describe`, `components`, `schema`, `--help`.

use crate::common::*;

const BROKEN: &str = r#"[sources.fleet]
type = "simulate"
sensors = 0

[sources.good]
type = "simulate"

[sources.unused]
type = "simulate"

[transforms.spikes]
type = "zscore"
inputs = ["good"]
thresold = 3

[transforms.z2]
type = "zscore"
inputs = ["good"]
window = 0
value_field = "temperature"

[transforms.a]
type = "filter"
inputs = ["b"]
condition = "is_anomaly"

[transforms.b]
type = "filter"
inputs = ["a", "fleet"]
condition = "is_anomaly"

[transforms.picky]
type = "filter"
inputs = ["good"]
condition = "value > 'high'"

[sinks.out]
type = "stdout"
inputs = ["spikes", "missing", "picky"]

[sinks.all]
type = "jsonl"
inputs = ["z2"]
path = "${TG_TEST_UNSET_OUTPUT:-out.jsonl}"
"#;

#[test]
fn check_reports_every_problem_with_place_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, BROKEN).unwrap();
    let out = tidegauge().arg("check").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "invalid pipeline exits 2");
    let text = stderr(&out).replace(&path.display().to_string(), "broken.toml");
    insta::assert_snapshot!("check_broken", text);
}

#[test]
fn the_readme_shows_check_output_as_the_snapshot_has_it() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let after = readme
        .split_once("`tidegauge check` reports every problem at once")
        .expect("README shows `tidegauge check` output")
        .1;
    let block = after.split("```\n").nth(1).expect("a code block follows");
    let snap = std::fs::read_to_string(
        root().join("crates/tidegauge/tests/it/snapshots/it__cli__check_broken.snap"),
    )
    .unwrap();
    let expected = snap.splitn(3, "---\n").nth(2).unwrap();
    assert_eq!(
        block.trim_end(),
        expected.trim_end(),
        "README's `check` example differs from the snapshot"
    );
}

#[test]
fn check_accepts_every_example() {
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let out = tidegauge()
            .arg("check")
            .arg(&path)
            .env("W1_INPUT", "in.jsonl")
            .env("W1_OUTPUT", "out.jsonl")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {}", path.display(), stderr(&out));
        assert!(stdout(&out).contains(": ok ("));
    }
}

#[test]
fn unset_variables_are_reported_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = tidegauge()
        .arg("check")
        .arg(root().join("examples/w1.toml"))
        .env_remove("W1_INPUT")
        .env_remove("W1_OUTPUT")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("environment variable `W1_INPUT` is not set"),
        "{err}"
    );
    assert!(
        err.contains("environment variable `W1_OUTPUT` is not set"),
        "{err}"
    );
    let text = std::fs::read_to_string(root().join("examples/w1.toml")).unwrap();
    let line = 1 + text
        .lines()
        .position(|l| l.contains("${W1_INPUT}"))
        .unwrap();
    assert!(err.contains(&format!("w1.toml:{line}:")), "{err}");
}

#[test]
fn describe_prints_parameters_from_the_config_struct() {
    let out = run(&["describe", "zscore"]);
    assert!(out.status.success());
    insta::assert_snapshot!("describe_zscore", stdout(&out));
}

#[test]
fn describe_json_is_a_json_schema() {
    let out = run(&["describe", "file", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["properties"]["type"]["const"], "file");
    assert_eq!(v["additionalProperties"], false);
    assert_eq!(v["properties"]["max_line_bytes"]["default"], 1048576);
    let required: Vec<&str> = v["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(required, vec!["type", "paths"]);
}

#[test]
fn describe_an_unknown_component_says_what_exists() {
    let out = run(&["describe", "zscor"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no component called `zscor` (known: "));
}

#[test]
fn components_lists_every_registered_component() {
    let out = run(&["components", "--json"]);
    assert!(out.status.success());
    let list: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
    let names: Vec<(&str, &str)> = list
        .iter()
        .map(|c| (c["kind"].as_str().unwrap(), c["name"].as_str().unwrap()))
        .collect();
    for want in [
        ("source", "simulate"),
        ("source", "file"),
        ("source", "stdin"),
        ("transform", "zscore"),
        ("transform", "filter"),
        ("sink", "jsonl"),
        ("sink", "stdout"),
    ] {
        assert!(names.contains(&want), "{want:?} missing from {names:?}");
    }
    assert!(
        list.iter()
            .all(|c| !c["summary"].as_str().unwrap().is_empty())
    );
}

#[test]
fn pipeline_schema_covers_every_component() {
    let out = run(&["schema"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let defs = v["$defs"].as_object().unwrap();
    for name in [
        "source_file",
        "transform_zscore",
        "sink_jsonl",
        "source_simulate_InjectConfig",
    ] {
        assert!(defs.contains_key(name), "{name} missing");
    }
    // Every reference resolves.
    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                    out.push(r.to_string());
                }
                m.values().for_each(|c| refs(c, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|c| refs(c, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&v, &mut all);
    for r in all {
        let name = r.strip_prefix("#/$defs/").unwrap();
        assert!(defs.contains_key(name), "dangling {r}");
    }
}

#[test]
fn help_explains_the_commands() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    insta::assert_snapshot!("help", stdout(&out));
}

/// One value out of range in a source, a detector and a sink's `retry` table: all three
/// reported at once, each at its path, in the one wording `describe` also uses.
#[test]
fn check_reports_ranges_of_the_pipeline_tables_in_the_components_wording() {
    // `[checkpoint]`, `[dead_letter]` and a sink's `buffer` are read through their
    // schemas as components are: the same check, the same words, every error at once.
    const PIPELINE: &str = r#"[sources.s]
type = "simulate"

[sinks.o]
type = "jsonl"
inputs = ["s"]
path = "o.jsonl"
buffer = { path = "buf", max_bytes = 0 }

[checkpoint]
dir = "cp"
interval_ms = 0
commit_interval_ms = 0

[dead_letter]
max_raw_bytes = -1
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tables.toml");
    std::fs::write(&path, PIPELINE).unwrap();
    let out = tidegauge().arg("check").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "invalid pipeline exits 2");
    let text = stderr(&out).replace(&path.display().to_string(), "tables.toml");
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors,
        [
            "error: tables.toml:8: sinks.o.buffer.max_bytes: must be at least 1, got 0",
            "error: tables.toml:12: checkpoint.interval_ms: must be at least 1, got 0",
            "error: tables.toml:13: checkpoint.commit_interval_ms: must be at least 1, got 0",
            "error: tables.toml:16: dead_letter.max_raw_bytes: invalid value: integer `-1`, expected a non-negative integer",
        ],
        "{text}"
    );
}

#[test]
fn check_reports_ranges_downstream_of_a_component_in_error() {
    // The sink's input cannot be typed (its source is wrong), yet its own settings'
    // ranges need no input: both mistakes are reported in one run.
    const PIPELINE: &str = r#"[sources.fleet]
type = "simulate"
sensors = 0

[sinks.archive]
type = "parquet"
inputs = ["fleet"]
path = "out"
row_group_rows = 0
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("downstream.toml");
    std::fs::write(&path, PIPELINE).unwrap();
    let out = tidegauge().arg("check").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "invalid pipeline exits 2");
    let text = stderr(&out).replace(&path.display().to_string(), "downstream.toml");
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors,
        [
            "error: downstream.toml:3: sources.fleet.sensors: must be in 1..=10000000, got 0",
            "error: downstream.toml:9: sinks.archive.row_group_rows: must be at least 1, got 0",
        ],
        "{text}"
    );
}

#[test]
fn check_reports_every_out_of_range_value_in_one_wording() {
    const PIPELINE: &str = r#"[sources.fleet]
type = "simulate"
sensors = 0

[sources.readings]
type = "stdin"

[transforms.spikes]
type = "zscore"
inputs = ["readings"]
threshold = 0.0

[sinks.fleet_out]
type = "stdout"
inputs = ["fleet"]

[sinks.spikes_out]
type = "stdout"
inputs = ["spikes"]

[sinks.archive]
type = "jsonl"
inputs = ["readings"]
path = "archive.jsonl"
retry = { max_attempts = 0, multiplier = 0.5 }
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ranges.toml");
    std::fs::write(&path, PIPELINE).unwrap();
    let out = tidegauge().arg("check").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "invalid pipeline exits 2");
    let text = stderr(&out).replace(&path.display().to_string(), "ranges.toml");
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors,
        [
            "error: ranges.toml:3: sources.fleet.sensors: must be in 1..=10000000, got 0",
            "error: ranges.toml:11: transforms.spikes.threshold: must be above 0, got 0",
            "error: ranges.toml:25: sinks.archive.retry.max_attempts: must be at least 1, got 0",
            "error: ranges.toml:25: sinks.archive.retry.multiplier: must be at least 1, got 0.5",
        ],
        "{text}"
    );
    assert!(text.contains("4 problems found"), "{text}");

    // `describe` shows the same ranges.
    for (name, line) in [
        (
            "simulate",
            "sensors  integer  default 20  range 1..=10000000",
        ),
        ("zscore", "threshold  number  default 3.0  range > 0"),
        (
            "jsonl",
            "retry.max_attempts  integer  default 4  range >= 1",
        ),
    ] {
        let out = tidegauge().args(["describe", name]).output().unwrap();
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(shown.contains(line), "describe {name}:\n{shown}");
    }
}

#[test]
fn check_reports_a_cycle_of_ten_thousand_filters_once_in_bounded_output() {
    let dir = tempfile::tempdir().unwrap();
    let n = 10_000;
    let mut text = String::from(
        "[sources.fleet]\ntype = \"simulate\"\n\n[sinks.out]\ntype = \"stdout\"\ninputs = [\"f0\"]\n",
    );
    for i in 0..n {
        // f0 reads the source and the last filter: every filter is on the cycle.
        let inputs = if i == 0 {
            format!("\"fleet\", \"f{}\"", n - 1)
        } else {
            format!("\"f{}\"", i - 1)
        };
        text.push_str(&format!(
            "\n[transforms.f{i}]\ntype = \"filter\"\ninputs = [{inputs}]\ncondition = \"value > 0\"\n"
        ));
    }
    let path = dir.path().join("cycle.toml");
    std::fs::write(&path, text).unwrap();
    let out = tidegauge().arg("check").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(
        err.matches("part of a cycle").count(),
        1,
        "one cycle, one error: {err}"
    );
    assert!(err.contains("(10000 in all)"), "{err}");
    assert!(
        out.stdout.len() + out.stderr.len() < 2_048,
        "{} bytes of output:\n{err}",
        out.stdout.len() + out.stderr.len()
    );
}

#[test]
fn check_reports_every_mistake_at_once_with_did_you_mean() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        r#"[sources.fleet]
type = "simulate"

[transforms.z]
type = "zscore"
inputs = ["fleet"]
windwo = 50
treshold = 4.0

[transforms.w]
type = "windwo"
inputs = ["z"]

[transforms.pick]
type = "filter"
inputs = ["z"]
condition = "valeu > 3"

[sinks.out]
type = "stdout"
inputs = ["pikc", "w"]
"#,
    )
    .unwrap();
    let out = tidegauge().arg("check").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for want in [
        "p.toml:7: transforms.z.windwo: unknown field `windwo`",
        "did you mean `window`?",
        "p.toml:8: transforms.z.treshold: unknown field `treshold`",
        "did you mean `threshold`?",
        "transforms.w.type: unknown transform type `windwo`",
        // Downstream of the misspelled parameter, the filter is still checked.
        "p.toml:17: transforms.pick.condition: unknown field `valeu`",
        "did you mean `value`?",
        "sinks.out.inputs: unknown input `pikc`",
        "did you mean `pick`?",
    ] {
        assert!(err.contains(want), "missing {want:?} in\n{err}");
    }
    let describe = tidegauge().args(["describe", "zcore"]).output().unwrap();
    assert_eq!(describe.status.code(), Some(2));
    assert!(
        stderr(&describe).contains("did you mean `zscore`?"),
        "{}",
        stderr(&describe)
    );
}

#[test]
fn describe_shows_the_bounds_check_enforces() {
    // `threshold` must be above 0: describe says so, check agrees on both sides of it.
    let text = stdout(&run(&["describe", "zscore"]));
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("threshold "))
        .unwrap();
    assert!(line.ends_with("range > 0"), "{line}");
    let dir = tempfile::tempdir().unwrap();
    let check = |threshold: &str| {
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            format!(
                "[sources.fleet]\ntype = \"simulate\"\n\n[transforms.z]\ntype = \"zscore\"\ninputs = [\"fleet\"]\nthreshold = {threshold}\n\n[sinks.out]\ntype = \"stdout\"\ninputs = [\"z\"]\n"
            ),
        )
        .unwrap();
        tidegauge().arg("check").arg(&path).output().unwrap()
    };
    assert_eq!(check("0.0").status.code(), Some(2));
    assert!(check("0.001").status.success());
    let schema: serde_json::Value =
        serde_json::from_slice(&run(&["describe", "zscore", "--json"]).stdout).unwrap();
    assert_eq!(
        schema["properties"]["threshold"]["exclusiveMinimum"],
        serde_json::json!(0.0)
    );
}

#[test]
fn usage_errors_exit_2_and_say_how_to_get_help() {
    for args in [
        &["--no-such-flag"][..],
        &["no-such-command"],
        &["check"],
        &["run", "p.toml", "--no-such-flag"],
    ] {
        let out = tidegauge().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("--help"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}
