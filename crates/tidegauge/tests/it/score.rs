//! `tidegauge score`: recorded data through the detectors of live pipelines.

use std::ffi::OsStr;
use std::path::Path;

use crate::common::*;

fn read_csv(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// Runs `tidegauge score ARGS --out OUT INPUTS...`.
fn score(args: &[&OsStr], out: &Path, inputs: &[&Path]) -> std::process::Output {
    tidegauge()
        .arg("score")
        .args(args)
        .arg("--out")
        .arg(out)
        .args(inputs)
        .output()
        .unwrap()
}

#[test]
fn score_gives_the_live_pipelines_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    w1_events(100_000, 7, &d.join("events.jsonl"));
    // Live: file -> mad -> jsonl, every event.
    let pipeline = format!(
        r#"
[sources.in]
type = "file"
paths = ["{d}/events.jsonl"]

[transforms.det]
type = "mad"
inputs = ["in"]
window = 30
threshold = 3.0

[sinks.out]
type = "jsonl"
inputs = ["det"]
path = "{d}/live.jsonl"
"#,
        d = d.display()
    );
    std::fs::write(d.join("pipeline.toml"), &pipeline).unwrap();
    let out = run_pipeline(d, &pipeline, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let live: Vec<serde_json::Value> = std::fs::read_to_string(d.join("live.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    // Recorded: the same events, the same detector taken from the pipeline file.
    let pipeline = d.join("pipeline.toml");
    let mut args = vec![OsStr::new("--detector"), pipeline.as_os_str()];
    args.extend(
        [
            "--key-column",
            "sensor_id",
            "--value-columns",
            "value",
            "--time-column",
            "ts",
        ]
        .map(OsStr::new),
    );
    let out = score(&args, &d.join("scored"), &[&d.join("events.jsonl")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let scored = read_csv(&d.join("scored/events.csv"));
    assert_eq!(scored[0], vec!["ts", "anomaly_score", "is_anomaly"]);
    assert_eq!(scored.len() - 1, live.len());
    let mut anomalies = 0;
    for (row, ev) in scored[1..].iter().zip(&live) {
        assert_eq!(row[0], ev["ts"].to_string());
        let score: f64 = row[1].parse().unwrap();
        assert_eq!(
            score,
            ev["anomaly_score"].as_f64().unwrap(),
            "exact, every digit"
        );
        assert_eq!(row[2] == "1", ev["is_anomaly"].as_bool().unwrap());
        anomalies += usize::from(row[2] == "1");
    }
    assert!(anomalies > 50, "{anomalies}");
}

#[test]
fn skab_layout_in_skab_layout_out() {
    let dir = tempfile::tempdir().unwrap();
    let skab = shared().join("data/skab");
    let args = [
        "--detector",
        "zscore",
        "--set",
        "window=100",
        "--delimiter",
        ";",
        "--ignore-columns",
        "anomaly,changepoint",
    ]
    .map(OsStr::new);
    let out = score(
        &args,
        dir.path(),
        &[
            &skab.join("valve1"),
            &skab.join("valve2"),
            &skab.join("other"),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("scored 34 file(s), 37401 rows"),
        "{}",
        stderr(&out)
    );
    let eval = std::process::Command::new("python3")
        .arg(shared().join("eval/skab_eval.py"))
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&eval.stdout);
    assert!(
        eval.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    // The data README's reference baseline for this detector: F1 0.17, MAR 90.46 %.
    let last = text.lines().last().unwrap();
    assert!(last.starts_with("F1=0.17 "), "{last}");
    assert!(last.contains("MAR=90.4"), "{last}");
}

#[test]
fn score_reports_bad_usage_clearly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.csv"), "time,label\n1,x\n").unwrap();
    let (out_dir, input) = (dir.path().join("o"), dir.path().join("a.csv"));
    let out = score(
        &["--detector", "zscore"].map(OsStr::new),
        &out_dir,
        &[&input],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no numeric value columns"),
        "{}",
        stderr(&out)
    );
    // A file separated by semicolons, read with the default comma: the error says so.
    let semi = dir.path().join("semi.csv");
    std::fs::write(&semi, "time;value\n1;2.5\n2;2.6\n").unwrap();
    let out = score(
        &["--detector", "zscore"].map(OsStr::new),
        &out_dir,
        &[&semi],
    );
    assert!(
        stderr(&out).contains("try --delimiter ';'"),
        "{}",
        stderr(&out)
    );
    let args = ["--detector", "zscore", "--set", "window=1"].map(OsStr::new);
    let out = score(&args, &out_dir, &[&input]);
    assert!(stderr(&out).contains("window"), "{}", stderr(&out));
}

#[test]
fn a_long_window_fits_by_holding_fewer_keys_unless_max_keys_is_chosen() {
    // A window of 10,000 values (80 KB a channel once full) with the default `max_keys`
    // of a live fleet would pass the bound on a stage's memory; a file of two channels
    // needs two keys, so `score` takes the most that fit and says so.
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("a.csv");
    let rows: String = (0..50)
        .map(|i| format!("{i},{},{}\n", i % 7, i % 5))
        .collect();
    std::fs::write(&input, format!("ts,a,b\n{rows}")).unwrap();
    let args = ["--detector", "zscore", "--set", "window=10000"].map(OsStr::new);
    let out = score(&args, &dir.path().join("o"), &[&input]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("scored 1 file(s), 50 rows, 0 anomalous, with zscore (max_keys "),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(": the most that fit)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(read_csv(&dir.path().join("o/a.csv")).len(), 51);
    // `max_keys` chosen with --set is kept, and the bound's error says what to lower.
    let args = [
        "--detector",
        "zscore",
        "--set",
        "window=10000",
        "--set",
        "max_keys=100000",
    ]
    .map(OsStr::new);
    let out = score(&args, &dir.path().join("p"), &[&input]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("lower max_keys"), "{}", stderr(&out));
}

#[test]
fn score_skips_and_dead_letters_what_it_cannot_read() {
    // A time that is not one, malformed CSV, too many fields, bad JSON, a JSON value
    // that is not an object: each line is skipped, counted, and dead-lettered with its
    // place and reason (none silently becomes a row number, a null or an empty row).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("a.csv"),
        "timestamp,value\n\
         2026-01-01T00:00:00Z,1\n\
         not a time,3\n\
         2026-01-01T00:00:03Z,\"4\n\
         2026-01-01T00:00:04Z,5,6\n\
         2026-01-01T00:00:05Z,6\n",
    )
    .unwrap();
    std::fs::write(
        d.join("b.jsonl"),
        "{\"ts\":\"2026-01-01T00:00:00Z\",\"value\":1}\n\
         not json\n\
         [1,2]\n\
         {\"ts\":\"yesterday\",\"value\":3}\n\
         {\"ts\":\"2026-01-01T12:00:02+02:00\",\"value\":4}\n",
    )
    .unwrap();
    let dead = d.join("dead.jsonl");
    let args = [
        OsStr::new("--detector"),
        OsStr::new("zscore"),
        OsStr::new("--no-progress"),
        OsStr::new("--dead-letter"),
        dead.as_os_str(),
    ];
    let out = score(&args, &d.join("o"), &[&d.join("a.csv"), &d.join("b.jsonl")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("4 rows")
            && stderr(&out).contains("6 line(s) skipped")
            && stderr(&out).contains("dead.jsonl"),
        "{}",
        stderr(&out)
    );
    let dead: Vec<serde_json::Value> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(String, String)> = dead
        .iter()
        .map(|r| {
            let loc = r["location"].as_str().unwrap();
            let file = Path::new(loc).file_name().unwrap().to_str().unwrap();
            (file.to_string(), r["reason"].as_str().unwrap().to_string())
        })
        .collect();
    let reasons: Vec<(&str, &str)> = got.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
    assert_eq!(reasons.len(), 6, "{reasons:?}");
    assert!(reasons[0].0 == "a.csv:3" && reasons[0].1.contains("not a timestamp"));
    assert!(reasons[1].0 == "a.csv:4" && reasons[1].1.contains("malformed CSV"));
    assert!(reasons[2].0 == "a.csv:5" && reasons[2].1.contains("expected 2 columns"));
    assert!(reasons[3].0 == "b.jsonl:2" && reasons[3].1.contains("invalid JSON"));
    assert!(reasons[4].0 == "b.jsonl:3" && reasons[4].1.contains("JSON object"));
    assert!(reasons[5].0 == "b.jsonl:4" && reasons[5].1.contains("not a timestamp"));
    // Only the readable rows are scored, an offset time among them.
    let a = read_csv(&d.join("o/a.csv"));
    let b = read_csv(&d.join("o/b.csv"));
    assert_eq!(a.len() - 1, 2, "{a:?}");
    assert_eq!(b.len() - 1, 2, "{b:?}");
    assert_eq!(b[2][0], "2026-01-01T12:00:02+02:00");
}
