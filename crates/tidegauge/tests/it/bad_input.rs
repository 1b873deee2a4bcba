//! Bad input is counted and dead-lettered with its place and reason; the rest flows.

use std::io::Write;
use std::path::Path;

use crate::common::*;

fn write_bad_input(path: &std::path::Path) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    f.write_all(b"{\"sensor_id\":\"s-1\",\"ts\":1,\"value\":1.5}\n")
        .unwrap();
    f.write_all(b"{\"sensor_id\":\"s-1\",\"ts\":2,\"value\":}\n")
        .unwrap();
    f.write_all(b"{\"sensor_id\":\"s-1\",\"ts\":3,\"value\":\"high\"}\n")
        .unwrap();
    f.write_all(b"{\"sensor_id\":\"s-1\",\"ts\":4}\n").unwrap();
    f.write_all(b"{\"sensor_id\":\"s-\xff\",\"ts\":5,\"value\":1.0}\n")
        .unwrap();
    // A 100 MB line.
    f.write_all(b"{\"sensor_id\":\"s-1\",\"ts\":6,\"value\":1.0,\"pad\":\"")
        .unwrap();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..100 {
        f.write_all(&chunk).unwrap();
    }
    f.write_all(b"\"}\n").unwrap();
    f.write_all(b"[1,2,3]\n").unwrap();
    f.write_all(b"{\"sensor_id\":\"s-2\",\"ts\":8,\"value\":-3}\n")
        .unwrap();
    f.write_all(b"{\"sensor_id\":{\"a\":1},\"ts\":9,\"value\":1.0}\n")
        .unwrap();
    f.write_all(b"{\"sensor_id\":\"s-3\",\"ts\":10,\"value\":2e3}")
        .unwrap();
}

/// 64 MB of zeros in one line, gzip-compressed to a few tens of KB.
fn write_gzip_bomb(path: &std::path::Path) {
    let f = std::fs::File::create(path).unwrap();
    let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let zeros = vec![b'0'; 1 << 20];
    for _ in 0..64 {
        gz.write_all(&zeros).unwrap();
    }
    gz.finish().unwrap();
}

/// Runs a pipeline from the source `[sources.in]` described by `source` (its settings, as
/// TOML lines) to `out.jsonl` in `d`, dead letters to `dead.jsonl`; asserts it succeeds.
fn run_to_files(d: &std::path::Path, source: &str) -> std::process::Output {
    let pipeline = format!(
        "[sources.in]\n{source}\n\n[sinks.out]\ntype = \"jsonl\"\ninputs = [\"in\"]\n\
         path = \"{d}/out.jsonl\"\n\n[dead_letter]\npath = \"{d}/dead.jsonl\"\n",
        d = d.display()
    );
    let out = run_pipeline(d, &pipeline, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

#[test]
fn every_kind_of_bad_line_is_dead_lettered_and_the_rest_flows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_bad_input(&d.join("bad.jsonl"));
    write_gzip_bomb(&d.join("bomb.jsonl.gz"));
    std::fs::write(
        d.join("after.jsonl"),
        "{\"sensor_id\":\"s-4\",\"ts\":11,\"value\":4.0}\n",
    )
    .unwrap();
    let out = run_to_files(
        d,
        &format!(
            r#"
type = "file"
paths = ["{d}/bad.jsonl", "{d}/bomb.jsonl.gz", "{d}/after.jsonl"]
max_decompressed_bytes = 20_000_000
"#,
            d = d.display()
        ),
    );

    let got = keys(&std::fs::read_to_string(d.join("out.jsonl")).unwrap());
    let want: Vec<(String, i64)> = vec![
        ("s-1".into(), 1),
        ("s-2".into(), 8),
        ("s-3".into(), 10),
        ("s-4".into(), 11),
    ];
    assert_eq!(got.into_iter().collect::<Vec<_>>(), want);

    let dead: Vec<serde_json::Value> = std::fs::read_to_string(d.join("dead.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |line: &str| {
        dead.iter()
            .find(|r| r["location"].as_str().unwrap().ends_with(line))
            .unwrap_or_else(|| panic!("no dead letter for {line}: {dead:?}"))
    };
    let reason = |line: &str| find(line)["reason"].as_str().unwrap().to_string();
    assert!(reason("bad.jsonl:2").contains("column"));
    assert_eq!(
        reason("bad.jsonl:3"),
        "field `value`: expected a number, got \"high\""
    );
    assert_eq!(reason("bad.jsonl:4"), "missing field `value`");
    assert!(reason("bad.jsonl:5").contains("UTF-8"));
    assert!(reason("bad.jsonl:6").contains("exceeds max_line_bytes"));
    assert_eq!(
        find("bad.jsonl:6")["raw_bytes"],
        1024,
        "only the head is kept"
    );
    assert!(reason("bad.jsonl:7").contains("expected a JSON object"));
    assert_eq!(
        reason("bad.jsonl:9"),
        "field `sensor_id`: expected a string, got an object"
    );
    let bomb = dead
        .iter()
        .find(|r| r["location"].as_str().unwrap().contains("bomb.jsonl.gz"))
        .expect("the bomb is reported");
    assert!(
        bomb["reason"]
            .as_str()
            .unwrap()
            .contains("decompressed size exceeds max_decompressed_bytes")
    );
    assert_eq!(dead.len(), 8, "{dead:#?}");
    assert_eq!(dead[0]["component"], "in");

    let summary = stderr(&out);
    assert!(summary.contains("8 dead-lettered"), "{summary}");
}

#[test]
fn a_gzip_bomb_under_default_limits_is_cut_at_the_line_limit_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_gzip_bomb(&d.join("bomb.gz"));
    run_to_files(
        d,
        &format!(
            r#"
type = "file"
paths = ["{d}/bomb.gz"]
"#,
            d = d.display()
        ),
    );
    let dead = std::fs::read_to_string(d.join("dead.jsonl")).unwrap();
    assert_eq!(dead.lines().count(), 1);
    assert!(
        dead.contains("line of 67108864 bytes exceeds max_line_bytes"),
        "{dead}"
    );
}

#[test]
fn csv_with_a_header_and_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("in.csv"),
        "datetime;Pressure;Current\n\
         2020-03-09 10:14:33;0.25;1.5\n\
         2020-03-09 10:14:34;oops;1.6\n\
         2020-03-09 10:14:35;0.27\n\
         not a time;0.28;1.7\n\
         2020-03-09 10:14:37;\"0.29\";1.8\n",
    )
    .unwrap();
    run_to_files(
        d,
        &format!(
            r#"
type = "file"
paths = ["{d}/in.csv"]
csv = {{ delimiter = ";" }}
fields = {{ datetime = "timestamp", Pressure = "float64" }}
"#,
            d = d.display()
        ),
    );
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(d.join("out.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["datetime"], 1_583_748_873_000i64);
    assert_eq!(rows[1]["Pressure"], 0.29);
    let dead = std::fs::read_to_string(d.join("dead.jsonl")).unwrap();
    assert!(
        dead.contains("in.csv:3") && dead.contains("expected a number, got \\\"oops\\\""),
        "{dead}"
    );
    assert!(
        dead.contains("in.csv:4") && dead.contains("expected 3 columns"),
        "{dead}"
    );
    assert!(
        dead.contains("in.csv:5") && dead.contains("expected a timestamp"),
        "{dead}"
    );
}

#[test]
fn rfc3339_timestamps_with_offsets_are_read_by_the_jsonl_and_csv_decoders() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 2026-01-01T08:00:00Z, written in three zones.
    let want = 1_767_254_400_000_i64;
    let stamps = [
        "2026-01-01T10:00:00+02:00",
        "2026-01-01T02:30:00-05:30",
        "2026-01-01T08:00:00Z",
    ];
    let mut jsonl = String::new();
    let mut csv = String::from("sensor_id,ts,value\n");
    for (i, t) in stamps.iter().enumerate() {
        jsonl.push_str(&format!(
            "{{\"sensor_id\":\"s-{i}\",\"ts\":\"{t}\",\"value\":1.0}}\n"
        ));
        csv.push_str(&format!("s-{i},{t},1.0\n"));
    }
    std::fs::write(d.join("in.jsonl"), &jsonl).unwrap();
    std::fs::write(d.join("in.csv"), &csv).unwrap();
    let out = d.join("out.jsonl");
    let pipeline = format!(
        r#"
[sources.in]
type = "file"
paths = ["{}", "{}"]
{}"#,
        d.join("in.jsonl").display(),
        d.join("in.csv").display(),
        out_and_dead_letters(d)
    );
    let o = run_pipeline(d, &pipeline, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).unwrap();
    let ts: Vec<i64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["ts"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ts, vec![want; 6], "{text}");
    let dead = std::fs::read_to_string(d.join("dead.jsonl")).unwrap_or_default();
    assert!(dead.is_empty(), "{dead}");
}

/// A file source over `paths` into a JSON Lines file, with a dead-letter file.
fn file_pipeline(d: &std::path::Path, paths: &[&std::path::Path]) -> String {
    let paths: Vec<String> = paths
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect();
    format!(
        r#"
[sources.in]
type = "file"
paths = [{}]
{}"#,
        paths.join(", "),
        out_and_dead_letters(d)
    )
}

#[test]
fn a_csv_header_without_a_declared_field_fails_the_run_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = d.join("in.csv");
    let mut csv = String::from("sensor_id,ts,reading\n");
    for i in 0..20_000 {
        csv.push_str(&format!("s-{},{i},1.5\n", i % 7));
    }
    std::fs::write(&input, csv).unwrap();
    let o = run_pipeline(d, &file_pipeline(d, &[&input]), &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("in.csv: header lacks column(s) `value` (header has: sensor_id, ts, reading)"),
        "{e}"
    );
    let dead = std::fs::read_to_string(d.join("dead.jsonl")).unwrap_or_default();
    assert!(
        dead.is_empty(),
        "a configuration error, not bad records: {dead}"
    );
}

#[test]
fn an_input_that_is_a_directory_fails_run_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sub = d.join("readings");
    std::fs::create_dir(&sub).unwrap();
    let text = file_pipeline(d, &[&sub]);
    let o = run_pipeline(d, &text, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
    let check = run(&["check", d.join("pipeline.toml").to_str().unwrap()]);
    assert_eq!(check.status.code(), Some(2), "{}", stderr(&check));
    assert!(
        stderr(&check).contains("sources.in.paths[0]: `")
            && stderr(&check).contains("is a directory"),
        "{}",
        stderr(&check)
    );
    // Without read permission (root reads everything, so only as another user).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        use std::os::unix::fs::PermissionsExt;
        let locked = d.join("locked.jsonl");
        std::fs::write(&locked, "{\"sensor_id\":\"s\",\"ts\":1,\"value\":1}\n").unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        let o = run_pipeline(d, &file_pipeline(d, &[&locked]), &[]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let check = run(&["check", d.join("pipeline.toml").to_str().unwrap()]);
        assert_eq!(check.status.code(), Some(2), "{}", stderr(&check));
    }
}

#[test]
fn a_missing_input_is_reported_by_check_and_fails_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = file_pipeline(d, &[&d.join("not-yet.jsonl")]);
    std::fs::write(d.join("pipeline.toml"), &text).unwrap();
    let check = run(&["check", d.join("pipeline.toml").to_str().unwrap()]);
    // Checked before the data arrives: a warning naming the place, not a failure.
    assert!(check.status.success(), "{}", stderr(&check));
    let e = stderr(&check);
    assert!(
        e.contains("warning:")
            && e.contains("sources.in.paths[0]: `")
            && e.contains("not-yet.jsonl` does not exist"),
        "{e}"
    );
    let o = run_pipeline(d, &text, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
}

#[test]
fn a_utf8_byte_order_mark_at_the_start_of_a_file_is_stripped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let jsonl = d.join("in.jsonl");
    let csv = d.join("in.csv");
    std::fs::write(
        &jsonl,
        "\u{feff}{\"sensor_id\":\"s-1\",\"ts\":1,\"value\":1.5}\n{\"sensor_id\":\"s-1\",\"ts\":2,\"value\":2.5}\n",
    )
    .unwrap();
    std::fs::write(&csv, "\u{feff}sensor_id,ts,value\ns-2,3,3.5\n").unwrap();
    let o = run_pipeline(d, &file_pipeline(d, &[&jsonl, &csv]), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = std::fs::read_to_string(d.join("out.jsonl")).unwrap();
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains("\"sensor_id\":\"s-2\""), "{out}");
    let dead = std::fs::read_to_string(d.join("dead.jsonl")).unwrap_or_default();
    assert!(dead.is_empty(), "{dead}");
}

#[test]
fn a_stdin_csv_header_without_a_declared_field_fails_the_run_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut child = spawn_piped(
        d,
        &format!(
            r#"
[sources.in]
type = "stdin"
format = "csv"
fields = {{ sensor_id = "string", ts = "timestamp", value = "float64" }}
{}"#,
            out_and_dead_letters(d)
        ),
    );
    let mut csv = String::from("sensor_id,ts,reading\n");
    for i in 0..20_000 {
        csv.push_str(&format!("s-{},{i},1.5\n", i % 7));
    }
    let mut stdin = child.stdin.take().unwrap();
    // The run may end before it has read everything: a closed pipe is expected then.
    let _ = stdin.write_all(csv.as_bytes());
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("stdin:1: header lacks column(s) `value` (header has: sensor_id, ts, reading)"),
        "{e}"
    );
    let dead = std::fs::read_to_string(d.join("dead.jsonl")).unwrap_or_default();
    assert!(
        dead.is_empty(),
        "a configuration error, not bad records: {dead}"
    );
}

/// The sink every pipeline here writes to, `out.jsonl` in `d`, and the dead letters beside it.
fn out_and_dead_letters(d: &Path) -> String {
    format!(
        r#"
[sinks.out]
type = "jsonl"
inputs = ["in"]
path = "{}"

[dead_letter]
path = "{}"
"#,
        d.join("out.jsonl").display(),
        d.join("dead.jsonl").display()
    )
}
