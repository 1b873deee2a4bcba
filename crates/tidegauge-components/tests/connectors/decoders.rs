//! The `file` source with several decoder threads gives what one decoder gives: the same
//! events in the same order, the same dead letters with the same line numbers, and
//! positions that resume exactly after what was acknowledged.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use crate::harness::{self, Event, Harness};

/// A JSON Lines input of `n` numbered lines with bad ones mixed in (malformed, a
/// missing field, blank, over-long); returns the text and the events of its good lines.
fn jsonl_with_bad_lines(n: usize) -> (String, Vec<Event>) {
    let mut text = String::new();
    let mut good = Vec::new();
    for (i, e) in harness::events(0, n).into_iter().enumerate() {
        if i % 13 == 5 {
            writeln!(text, "{{\"sensor_id\":\"s-1\",\"ts\":oops}}").unwrap();
        } else if i % 29 == 3 {
            writeln!(text, "{{\"sensor_id\":\"{}\",\"ts\":{}}}", e.0, e.1).unwrap();
        } else if i % 17 == 9 {
            text.push('\n');
        } else if i == n / 2 {
            writeln!(text, "{{\"sensor_id\":\"{}\"}}", "x".repeat(500)).unwrap();
        } else {
            writeln!(text, "{}", harness::json(&e)).unwrap();
            good.push(e);
        }
    }
    (text, good)
}

/// The same as CSV with a header (and a bad row where the JSON has one).
fn csv_with_bad_lines(n: usize) -> (String, Vec<Event>) {
    let mut text = String::from("sensor_id,ts,value\n");
    let mut good = Vec::new();
    for (i, e) in harness::events(0, n).into_iter().enumerate() {
        if i % 13 == 5 {
            writeln!(text, "{},oops,1", e.0).unwrap();
        } else if i % 29 == 3 {
            writeln!(text, "{},{}", e.0, e.1).unwrap();
        } else if i % 17 == 9 {
            text.push('\n');
        } else if i == n / 2 {
            writeln!(text, "{},{},{}", "x".repeat(500), e.1, e.2).unwrap();
        } else {
            writeln!(text, "{},{},{}", e.0, e.1, e.2).unwrap();
            good.push(e);
        }
    }
    (text, good)
}

/// Reads `path` to its end with `decoders` threads: the events in the order they came,
/// and the dead letters (without their time).
async fn read_to_end(
    path: &Path,
    decoders: usize,
    expected: usize,
) -> (Vec<Event>, Vec<serde_json::Value>) {
    let h = Harness::new();
    let source = h.source(&format!(
        "type = \"file\"\npaths = [\"{}\"]\nmax_line_bytes = 200\ndecoders = {decoders}\n\
         batch = {{ rows = 64, linger_ms = 600000 }}",
        path.display()
    ));
    let mut run = source.start().await;
    let mut got = run.take(expected).await;
    run.ack_all();
    got.extend(run.stop(true).await);
    let dead = h
        .dead_letters()
        .into_iter()
        .map(|mut d| {
            d.as_object_mut().unwrap().remove("time");
            d
        })
        .collect();
    (got, dead)
}

async fn same_output_whatever_the_decoders(name: &str, text: &str, good: &[Event]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let (one, dead_one) = read_to_end(&path, 1, good.len()).await;
    assert_eq!(one, good, "one decoder reads every good line in order");
    assert!(
        dead_one.len() > 100,
        "the bad lines are dead-lettered ({})",
        dead_one.len()
    );
    assert!(
        dead_one
            .iter()
            .any(|d| d["reason"].as_str().unwrap().contains("max_line_bytes")),
        "the over-long line is dead-lettered"
    );
    for n in 2..=4 {
        let (many, dead_many) = read_to_end(&path, n, good.len()).await;
        assert_eq!(many, one, "{n} decoders: the events of one, in its order");
        assert_eq!(
            dead_many, dead_one,
            "{n} decoders: the dead letters of one, in its order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_decoded_on_several_threads_is_what_one_decodes() {
    let (text, good) = jsonl_with_bad_lines(5_000);
    same_output_whatever_the_decoders("in.jsonl", &text, &good).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_decoded_on_several_threads_is_what_one_decodes() {
    let (text, good) = csv_with_bad_lines(5_000);
    same_output_whatever_the_decoders("in.csv", &text, &good).await;
}

/// Blank and over-long lines before the CSV header: the reader's thread looks for the
/// header as one decoder does, and the rows after it decode the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_header_after_blank_and_bad_lines_is_found_as_by_one_decoder() {
    let (text, good) = csv_with_bad_lines(2_000);
    let text = format!("\n  \n{}\n\n{text}", "y".repeat(300));
    same_output_whatever_the_decoders("late-header.csv", &text, &good).await;
}

/// Batches are full by bytes before a chunk of lines ends (short CSV rows decode to more
/// bytes than their text): a resumed run starts right after what was acknowledged, never
/// skipping a line and never repeating an acknowledged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_file_resumes_exactly_after_what_was_acknowledged() {
    let h = Harness::new();
    let path = h.dir.path().join("in.csv");
    let line = |e: &Event| format!("{},{},{}\n", e.0, e.1, e.2);
    let mut text = String::from("sensor_id,ts,value\n");
    let first = harness::events(0, 3_000);
    first.iter().for_each(|e| text.push_str(&line(e)));
    std::fs::write(&path, text).unwrap();
    let body = format!(
        "type = \"file\"\npaths = [\"{}\"]\nfollow = true\ndecoders = 3\n\
         batch = {{ rows = 1000, max_bytes = 1024, linger_ms = 600000 }}",
        path.display()
    );
    let source = h.source_with_positions(&body);
    let mut run = source.start().await;
    assert_eq!(run.take(first.len()).await, first);
    run.ack_all();
    let tail = run.stop(true).await;
    assert!(tail.is_empty(), "nothing more to read: {}", tail.len());

    let second = harness::events(3_000, 4_500);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    second
        .iter()
        .for_each(|e| f.write_all(line(e).as_bytes()).unwrap());
    drop(f);
    let mut run = source.start().await;
    assert_eq!(
        run.take(second.len()).await,
        second,
        "the next run reads the new lines, only them"
    );
    run.ack_all();
    assert!(run.stop(true).await.is_empty());
}

/// Each batch carries the position after its last line: when only the first batches are
/// acknowledged, the next run starts exactly after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_position_committed_is_the_one_after_the_last_acknowledged_batch() {
    let h = Harness::new();
    let path = h.dir.path().join("in.jsonl");
    let all = harness::events(0, 1_002);
    let text: String = all[..1_000]
        .iter()
        .map(|e| harness::json(e) + "\n")
        .collect();
    std::fs::write(&path, text).unwrap();
    let append = |e: &Event| {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all((harness::json(e) + "\n").as_bytes()).unwrap();
    };
    let body = format!(
        "type = \"file\"\npaths = [\"{}\"]\nfollow = true\ndecoders = 3\n\
         batch = {{ rows = 100, linger_ms = 600000 }}",
        path.display()
    );
    let source = h.source_with_positions(&body);
    let mut run = source.start().await;
    assert_eq!(run.take(1_000).await, all[..1_000]);
    assert_eq!(run.held.len(), 10, "one batch per 100 lines");
    let later = run.held.split_off(4);
    run.ack_all();
    // The reader commits what is acknowledged after each send: once the batch after
    // the next one arrives, the acknowledgements above are committed.
    for e in &all[1_000..] {
        append(e);
        assert_eq!(run.take(1).await, std::slice::from_ref(e));
    }
    later.into_iter().for_each(|f| f.fail());
    run.fail_all();
    run.stop(false).await;

    let mut run = source.start().await;
    assert_eq!(
        run.take(602).await,
        all[400..],
        "the next run starts right after the four acknowledged batches"
    );
    run.ack_all();
    assert!(run.stop(true).await.is_empty());
}
