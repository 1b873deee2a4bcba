//! `postgres` sink against PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt;

use crate::harness::{self, Event, Harness, check_sink, unique};

fn server() -> Option<(String, String)> {
    let conn = harness::server("TIDEGAUGE_TEST_POSTGRES")?;
    let password = harness::server("TIDEGAUGE_TEST_POSTGRES_PASSWORD")?;
    Some((conn, password))
}

async fn client(conn: &str, password: &str) -> tokio_postgres::Client {
    let mut c: tokio_postgres::Config = conn.parse().unwrap();
    c.password(password);
    let (client, connection) = c.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn read_table(conn: &str, password: &str, table: &str) -> Vec<Event> {
    let c = client(conn, password).await;
    c.query(&format!("SELECT sensor_id, ts, value FROM {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                r.get::<_, i64>(1),
                r.get::<_, f64>(2),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_compliance() {
    let Some((conn, password)) = server() else {
        return;
    };
    let table = unique("readings").replace('-', "_");
    let h = Harness::new();
    let sink = h.sink(&format!(
        "type = \"postgres\"\nconnection = \"{conn}\"\npassword = \"{password}\"\ntable = \"{table}\"\ncreate_table = true\nflush_interval_ms = 50"
    ));
    let read_back = |_expect: usize| {
        let (conn, password, table) = (conn.clone(), password.clone(), table.clone());
        async move { read_table(&conn, &password, &table).await }.boxed()
    };
    check_sink(&sink, &read_back).await;
}

/// A TCP relay to the real server whose link the test can cut: while cut, open
/// connections are dropped and new ones refused. Stands for a network failure.
struct Relay {
    port: u16,
    cut: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    /// Relayed connections still open.
    open: Arc<AtomicUsize>,
}

/// Counts a relayed connection as open until its task ends (and its sockets are dropped).
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Open {
        count.fetch_add(1, Ordering::SeqCst);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (c, g, o) = (cut.clone(), generation.clone(), open.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let (c, g, target) = (c.clone(), g.clone(), target.clone());
                let born = g.load(Ordering::SeqCst);
                let open = Open::new(&o);
                tokio::spawn(async move {
                    let _open = open;
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let relay = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    tokio::pin!(relay);
                    loop {
                        tokio::select! {
                            _ = &mut relay => return,
                            _ = tokio::time::sleep(Duration::from_millis(5)) => {
                                if c.load(Ordering::SeqCst) || g.load(Ordering::SeqCst) != born {
                                    return; // both ends dropped
                                }
                            }
                        }
                    }
                });
            }
        });
        Relay {
            port,
            cut,
            generation,
            open,
        }
    }

    /// Cuts the link (`on`) or restores it. Returns once every connection open at the
    /// cut is gone: a write made after it cannot slip through an old connection.
    async fn cut(&self, on: bool) {
        self.cut.store(on, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        if on {
            let deadline = tokio::time::Instant::now() + harness::PATIENCE;
            while self.open.load(Ordering::SeqCst) > 0 {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "relay did not drop its connections"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_retries_across_a_lost_connection() {
    let Some((conn, password)) = server() else {
        return;
    };
    let c: tokio_postgres::Config = conn.parse().unwrap();
    let port = c.get_ports()[0];
    let relay = Relay::start(format!("127.0.0.1:{port}")).await;
    let via_relay: String = conn
        .split_whitespace()
        .map(|kv| {
            if kv.starts_with("port=") {
                format!("port={}", relay.port)
            } else {
                kv.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let table = unique("reconnect").replace('-', "_");
    let h = Harness::new();
    let sink = h.sink(&format!(
        "type = \"postgres\"\nconnection = \"{via_relay}\"\npassword = \"{password}\"\ntable = \"{table}\"\ncreate_table = true\nflush_interval_ms = 20\ntimeout_ms = 2000\nretry = {{ initial_backoff_ms = 20, max_backoff_ms = 200, max_attempts = 1000, budget_min_per_sec = 100 }}\nbreaker = {{ failure_threshold = 1000 }}"
    ));
    let mut running = sink.start().await;
    let first = harness::events(0, 100);
    running.send(&first).await;
    assert!(running.next_ack().await.delivered);

    // The link goes down: the next batch cannot be copied; the sink keeps retrying.
    relay.cut(true).await;
    let second = harness::events(100, 200);
    running.send(&second).await;
    let deadline = tokio::time::Instant::now() + harness::PATIENCE;
    while sink.telemetry().errors < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no retry seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        running.acks.try_recv().is_err(),
        "not acknowledged while the link is down"
    );
    // The link comes back: the batch goes through on a new connection.
    relay.cut(false).await;
    assert!(running.next_ack().await.delivered);
    let third = harness::events(200, 300);
    running.send(&third).await;
    let (r, _) = running.finish().await;
    r.unwrap();
    let stored = harness::sorted(read_table(&conn, &password, &table).await);
    assert_eq!(
        stored,
        harness::events(0, 300),
        "every event once: nothing lost or repeated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_dead_letters_rows_the_database_rejects() {
    let Some((conn, password)) = server() else {
        return;
    };
    let table = unique("strict").replace('-', "_");
    let admin = client(&conn, &password).await;
    admin
        .batch_execute(&format!(
            "CREATE TABLE {table} (sensor_id text NOT NULL, ts bigint NOT NULL, value double precision CHECK (value < 10))"
        ))
        .await
        .unwrap();
    let h = Harness::new();
    let sink = h.sink(&format!(
        "type = \"postgres\"\nconnection = \"{conn}\"\npassword = \"{password}\"\ntable = \"{table}\""
    ));
    let mut running = sink.start().await;
    let events = harness::events(0, 60); // values 0 .. 14.75: 20 rows break the check
    running.send(&events).await;
    let (r, acks) = running.finish().await;
    r.unwrap();
    assert!(acks[0].delivered, "handled: stored or dead-lettered");
    let stored = harness::sorted(read_table(&conn, &password, &table).await);
    let want: Vec<Event> = events.iter().filter(|e| e.2 < 10.0).cloned().collect();
    assert_eq!(stored, want);
    let dead = h.dead_letters();
    assert_eq!(dead.len(), 20);
    assert!(
        dead[0]["reason"].as_str().unwrap().contains("23514"),
        "{:?}",
        dead[0]
    );
    assert!(dead[0]["location"].as_str().unwrap().contains(&table));
}
