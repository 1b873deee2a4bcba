//! W1 correctness: `examples/w1.toml` emits exactly the oracle's anomalies.

use crate::common::*;

#[test]
fn w1_200k_matches_the_oracle_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("w1.jsonl");
    let output = dir.path().join("anomalies.jsonl");
    w1_events(200_000, 42, &input);

    let out = tidegauge()
        .arg("run")
        .arg(root().join("examples/w1.toml"))
        .env("W1_INPUT", &input)
        .env("W1_OUTPUT", &output)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let text = std::fs::read_to_string(&output).unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for field in ["sensor_id", "ts", "value", "z"] {
            assert!(v.get(field).is_some(), "{field} missing in {line}");
        }
        assert!(v["z"].as_f64().unwrap().abs() > 3.0);
    }
    let got = keys(&text);
    let want = w1_oracle(&input);
    assert_eq!(
        want.len(),
        730,
        "the kit's known answer for 200k events, seed 42"
    );
    let missing: Vec<_> = want.difference(&got).take(5).collect();
    let extra: Vec<_> = got.difference(&want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    assert_eq!(text.lines().count(), 730, "no duplicates");
    assert!(stderr(&out).contains("200,000 events"), "{}", stderr(&out));
}
