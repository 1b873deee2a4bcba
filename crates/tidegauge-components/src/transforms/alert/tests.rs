use super::*;

fn rules() -> Rules {
    Rules::from(&AlertConfig {
        for_events: 2,
        resolve_after_ms: 100,
        ..AlertConfig::default()
    })
}

/// Plays `(ts, anomalous)` events of sensor `s` and returns (ts, status, repeat) of
/// each notice, after the last event advancing the clock to `end`.
fn play(book: &mut Incidents, events: &[(i64, bool)], end: i64) -> Vec<(i64, Status, u64)> {
    let mut out = Vec::new();
    let flagged = |on: bool| {
        on.then_some(Flagged {
            score: 2.0,
            detector: Some("zscore"),
            reason: Some("far off"),
        })
    };
    for &(ts, on) in events {
        book.event("s", ts, flagged(on), &mut out);
        book.advance(&mut out);
    }
    book.event("other", end, None, &mut out);
    book.advance(&mut out);
    out.iter().map(|n| (n.ts, n.status, n.repeat)).collect()
}

#[test]
fn opens_after_for_events_in_a_row_and_resolves_after_the_quiet_time() {
    let mut book = Incidents::new(rules());
    let got = play(
        &mut book,
        &[
            (0, true),
            (10, false),
            (20, true),
            (30, true),
            (40, true),
            (50, false),
        ],
        1000,
    );
    // 0 alone was cancelled by the normal event at 10; 20 and 30 open it; quiet
    // from 40 (the last anomaly) for 100 ms resolves it at 140.
    assert_eq!(
        got,
        vec![(30, Status::Firing, 0), (140, Status::Resolved, 0)]
    );
}

#[test]
fn one_firing_and_one_resolved_with_start_end_peak_count_reason() {
    let mut book = Incidents::new(rules());
    let mut out = Vec::new();
    for (ts, score) in [(0, 1.0), (5, 3.5), (9, 2.0)] {
        let f = Flagged {
            score,
            detector: Some("zscore"),
            reason: Some(if score > 3.0 { "peak" } else { "minor" }),
        };
        book.event("s", ts, Some(f), &mut out);
    }
    book.event("s", 500, None, &mut out);
    let statuses: Vec<_> = out.iter().map(|n| n.status).collect();
    assert_eq!(statuses, vec![Status::Firing, Status::Resolved]);
    let resolved = &out[1].incident;
    assert_eq!((resolved.starts_at, out[1].ts), (0, 109));
    assert_eq!(resolved.anomalies, 3);
    assert_eq!(resolved.peak_score, 3.5);
    assert_eq!(resolved.reason.as_deref(), Some("peak"));
    assert_eq!(out[0].incident.starts_at, 0);
}

#[test]
fn for_ms_waits_for_persistence() {
    let mut book = Incidents::new(Rules {
        for_events: 1,
        for_ms: 50,
        ..rules()
    });
    let got = play(
        &mut book,
        &[(0, true), (20, true), (40, true), (60, true)],
        61,
    );
    assert_eq!(got, vec![(60, Status::Firing, 0)]);
}

#[test]
fn long_incidents_get_reminders() {
    let mut book = Incidents::new(Rules {
        repeat_interval_ms: 30,
        ..rules()
    });
    let events: Vec<(i64, bool)> = (0..=10).map(|i| (i * 10, true)).collect();
    let got = play(&mut book, &events, 1000);
    assert_eq!(
        got,
        vec![
            (10, Status::Firing, 0),
            (40, Status::Firing, 1),
            (70, Status::Firing, 2),
            (100, Status::Firing, 3),
            (200, Status::Resolved, 3),
        ]
    );
}

#[test]
fn the_rate_limit_holds_back_notices_and_their_resolution() {
    let mut book = Incidents::new(Rules {
        for_events: 1,
        max_per_minute: 2,
        ..rules()
    });
    let mut out = Vec::new();
    let f = || {
        Some(Flagged {
            score: 1.0,
            ..Flagged::default()
        })
    };
    for s in ["a", "b", "c"] {
        book.event(s, 0, f(), &mut out);
    }
    book.event("d", 1000, None, &mut out);
    book.advance(&mut out);
    let said: Vec<_> = out.iter().map(|n| (n.key.as_str(), n.status)).collect();
    assert_eq!(
        said,
        vec![
            ("a", Status::Firing),
            ("b", Status::Firing),
            ("a", Status::Resolved),
            ("b", Status::Resolved),
        ]
    );
    assert_eq!(book.held_back, 1);
}

#[test]
fn a_flapping_sensor_gives_one_long_incident() {
    let flappy = Rules {
        for_events: 1,
        flap_window_ms: 1000,
        flap_max_opens: 3,
        ..rules()
    };
    // On for one event, off for 150 ms (longer than the 100 ms quiet time), again
    // and again.
    let events: Vec<(i64, bool)> = (0..12)
        .flat_map(|i| [(i * 160, true), (i * 160 + 10, false)])
        .collect();
    let without = play(&mut Incidents::new(rules_one()), &events, 5000);
    let with = play(&mut Incidents::new(flappy), &events, 5000);
    let firing = |v: &[(i64, Status, u64)]| v.iter().filter(|n| n.1 == Status::Firing).count();
    assert_eq!(firing(&without), 12, "each burst its own incident");
    assert_eq!(firing(&with), 3, "after the third opening it stays open");
    assert_eq!(with.last().map(|n| n.1), Some(Status::Resolved));
    // The long incident resolves a flap window after its last anomaly.
    assert_eq!(with.last().map(|n| n.0), Some(11 * 160 + 1000));
}

fn rules_one() -> Rules {
    Rules {
        for_events: 1,
        ..rules()
    }
}

#[test]
fn incidents_survive_a_checkpoint() {
    let mut book = Incidents::new(rules());
    let mut out = Vec::new();
    let f = || {
        Some(Flagged {
            score: 4.0,
            detector: Some("mad"),
            reason: Some("r"),
        })
    };
    book.event("s", 0, f(), &mut out);
    book.event("s", 10, f(), &mut out);
    let bytes = book.save().unwrap();
    let mut again = Incidents::new(rules());
    again.load(&bytes).unwrap();
    assert_eq!(again.groups, book.groups);
    let mut out = Vec::new();
    again.event("s", 20, f(), &mut out);
    again.event("s", 500, None, &mut out);
    assert_eq!(out.len(), 1, "the open incident resolves; no second firing");
    assert_eq!(
        (out[0].status, out[0].incident.anomalies),
        (Status::Resolved, 3)
    );
    assert!(again.load(b"junk").is_err());
}

#[test]
fn a_silent_input_moves_event_time_with_the_wall_clock_once_idle_long_enough() {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let later = |ms: u64| at + Duration::from_millis(ms);
    assert_eq!(
        idle_event_time(at, 500, later(999), 1_000),
        None,
        "not idle yet"
    );
    assert_eq!(idle_event_time(at, 500, later(1_000), 1_000), Some(1_500));
    assert_eq!(idle_event_time(at, 500, later(5_000), 1_000), Some(5_500));
    assert_eq!(
        idle_event_time(at, 500, later(5_000), 0),
        None,
        "0 turns it off"
    );
    assert_eq!(
        idle_event_time(at, i64::MIN, later(5_000), 1_000),
        None,
        "no event time yet"
    );
    assert_eq!(
        idle_event_time(at, 500, at - Duration::from_secs(1), 1_000),
        None,
        "a clock that went back"
    );
}

#[test]
fn an_incident_of_a_stream_that_stopped_resolves_when_event_time_moves_on() {
    let mut book = Incidents::new(rules());
    let mut out = Vec::new();
    let f = || Flagged {
        score: 2.0,
        detector: None,
        reason: None,
    };
    book.event("s", 0, Some(f()), &mut out);
    book.event("s", 10, Some(f()), &mut out);
    book.advance(&mut out);
    assert_eq!(out.len(), 1, "firing");
    // No more events; the idle clock says event time is now 10 + 100.
    book.now = 110;
    book.advance(&mut out);
    assert_eq!(out.len(), 2);
    assert_eq!((out[1].status, out[1].ts), (Status::Resolved, 110));
}
