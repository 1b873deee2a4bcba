//! Serving the API so that no client can lock it: every connection is bounded in time
//! and in memory, and the number of connections is capped overall and per client.
//!
//! - a request's headers must arrive within [`Limits::header_read_timeout`] of the
//!   connection opening (or of the previous answer on a kept-alive connection), and
//!   they may not exceed [`Limits::max_header_bytes`] (431 otherwise);
//! - a connection with no request in progress is closed after [`Limits::idle_timeout`];
//! - at most [`Limits::max_connections`] connections are open, at most
//!   [`Limits::max_per_client`] from one address. When a new connection would pass a cap,
//!   the connection idle the longest (no request in progress: a client still sending
//!   headers, or a kept-alive one) is closed to make room — of the same client when the
//!   client's cap is reached, of any client otherwise. Only when every connection is in
//!   the middle of a request (each bounded by the request timeout) is the new one
//!   refused. So a flood of idle or half-sent connections costs at most the caps' worth
//!   of sockets and buffers, and a client that sends a whole request promptly (a health
//!   probe) is served while it lasts.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;

/// Bounds on the connections of the admin API.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest time for a request's headers to arrive.
    pub header_read_timeout: Duration,
    /// Longest a connection stays open with no request in progress.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// Most connections open at once from one IP address.
    pub max_per_client: usize,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_connections: 256,
            max_per_client: 64,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// Connection counters, shown in `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Idle connections closed to make room for a new one.
    pub evicted: AtomicU64,
    /// New connections refused because every open one was busy.
    pub refused: AtomicU64,
    /// Connections closed after `idle_timeout` with no request.
    pub idle_closed: AtomicU64,
    /// Errors accepting (e.g. the process's file limit).
    pub accept_errors: AtomicU64,
    /// Open now (connections held; an evicted one stops counting when evicted).
    pub open: AtomicU64,
}

struct Conn {
    peer: IpAddr,
    /// `None` while a request is in progress.
    idle_since: Option<Instant>,
    close: CancellationToken,
}

#[derive(Default)]
struct Table {
    conns: HashMap<u64, Conn>,
    next_id: u64,
}

impl Table {
    /// The connection idle the longest, among those of `peer` when given.
    fn oldest_idle(&self, peer: Option<IpAddr>) -> Option<u64> {
        self.conns
            .iter()
            .filter(|(_, c)| peer.is_none_or(|p| c.peer == p))
            .filter_map(|(id, c)| c.idle_since.map(|t| (t, *id)))
            .min()
            .map(|(_, id)| id)
    }
}

type Shared = Arc<Mutex<Table>>;

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Table> {
    // Every update is a single insert, remove or field write: a panicking holder
    // cannot leave the table torn.
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks a connection busy for as long as it lives (one request).
struct Busy {
    table: Shared,
    id: u64,
}

impl Busy {
    fn new(table: Shared, id: u64) -> Self {
        if let Some(c) = lock(&table).conns.get_mut(&id) {
            c.idle_since = None;
        }
        Busy { table, id }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(c) = lock(&self.table).conns.get_mut(&self.id) {
            c.idle_since = Some(Instant::now());
        }
    }
}

/// Marks an answer whose body is streamed for long (a live feed): its connection counts
/// as busy until the body ends. Such routes bound their own number and lifetime.
#[derive(Clone, Copy, Debug)]
pub struct Streaming;

/// An answer's body, holding its connection busy while it lasts (when `_busy` is set).
struct Guarded<B> {
    inner: B,
    _busy: Option<Busy>,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Waits until connection `id` has been idle for `timeout`.
async fn idle_expired(table: &Shared, id: u64, timeout: Duration) {
    loop {
        let entry = lock(table).conns.get(&id).map(|c| c.idle_since);
        let Some(idle_since) = entry else {
            // Evicted: its close token ends it, and it is not counted as idle-closed.
            return std::future::pending().await;
        };
        match idle_since {
            Some(t) if t.elapsed() >= timeout => return,
            Some(t) => tokio::time::sleep(timeout - t.elapsed()).await,
            None => tokio::time::sleep(timeout).await,
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    counters: Arc<ConnectionCounters>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let table: Shared = Arc::default();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_header_size(limits.max_header_bytes)
        .max_headers(64);
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment rather than spin.
                counters.accept_errors.fetch_add(1, Ordering::Relaxed);
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    last_warning = Some(Instant::now());
                    tracing::warn!("admin API: cannot accept a connection: {e}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = peer.ip();
        let close = CancellationToken::new();
        let id = {
            let mut t = lock(&table);
            let from_peer = t.conns.values().filter(|c| c.peer == peer).count();
            let full = t.conns.len() >= limits.max_connections;
            let over_client = from_peer >= limits.max_per_client;
            if over_client || full {
                let victim = t.oldest_idle(over_client.then_some(peer));
                match victim.and_then(|v| t.conns.remove(&v)) {
                    Some(v) => {
                        v.close.cancel();
                        counters.evicted.fetch_add(1, Ordering::Relaxed);
                        counters.open.fetch_sub(1, Ordering::Relaxed);
                    }
                    None => {
                        counters.refused.fetch_add(1, Ordering::Relaxed);
                        drop(stream);
                        continue;
                    }
                }
            }
            let id = t.next_id;
            t.next_id += 1;
            t.conns.insert(
                id,
                Conn {
                    peer,
                    idle_since: Some(Instant::now()),
                    close: close.clone(),
                },
            );
            id
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        counters.open.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let service = {
            let table = table.clone();
            let inner = TowerToHyperService::new(router.clone());
            service_fn(move |request: hyper::Request<Incoming>| {
                let busy = Busy::new(table.clone(), id);
                let answer = hyper::service::Service::call(&inner, request);
                async move {
                    let response = answer.await?;
                    // A streamed answer (a live feed) keeps its connection busy until
                    // its body ends: idle-closing it would cut the feed. Other answers
                    // free it now, so a client that never reads a body stays evictable.
                    let hold = response.extensions().get::<Streaming>().is_some();
                    let busy = hold.then_some(busy);
                    Ok::<_, std::convert::Infallible>(
                        response.map(|inner| Guarded { inner, _busy: busy }),
                    )
                }
            })
        };
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let table = table.clone();
        let counters = counters.clone();
        let idle_timeout = limits.idle_timeout;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let idle = tokio::select! {
                _ = connection.as_mut() => false,
                _ = close.cancelled() => false,
                _ = stop.cancelled() => false,
                _ = idle_expired(&table, id, idle_timeout) => true,
            };
            if idle {
                counters.idle_closed.fetch_add(1, Ordering::Relaxed);
            }
            if lock(&table).conns.remove(&id).is_some() {
                counters.open.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    #[test]
    fn the_longest_idle_goes_first_and_busy_ones_never() {
        let mut t = Table::default();
        let now = Instant::now();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        for (id, peer, idle) in [
            (1, a, Some(now + Duration::from_millis(5))),
            (2, b, Some(now)),
            (3, a, None),
            (4, a, Some(now + Duration::from_millis(1))),
        ] {
            t.conns.insert(
                id,
                Conn {
                    peer,
                    idle_since: idle,
                    close: CancellationToken::new(),
                },
            );
        }
        assert_eq!(t.oldest_idle(None), Some(2));
        assert_eq!(t.oldest_idle(Some(a)), Some(4));
        t.conns.retain(|id, _| *id == 3);
        assert_eq!(t.oldest_idle(None), None);
    }

    struct Server {
        address: std::net::SocketAddr,
        counters: Arc<ConnectionCounters>,
        stop: CancellationToken,
        /// Requests to `/hold` wait for this.
        release: Arc<tokio::sync::Notify>,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    async fn start(limits: Limits) -> Server {
        let release = Arc::new(tokio::sync::Notify::new());
        let held = release.clone();
        let router = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route(
                "/hold",
                get(move || {
                    let held = held.clone();
                    async move {
                        held.notified().await;
                        "released"
                    }
                }),
            );
        serve_on_loopback(router, limits, release).await
    }

    /// Serves `router` on a free loopback port until the [`Server`] is dropped.
    async fn serve_on_loopback(
        router: Router,
        limits: Limits,
        release: Arc<tokio::sync::Notify>,
    ) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let counters = Arc::new(ConnectionCounters::default());
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            router,
            limits,
            counters.clone(),
            stop.clone(),
        ));
        Server {
            address,
            counters,
            stop,
            release,
        }
    }

    /// One request on a new connection; the whole answer (the server closes after it).
    async fn fetch(address: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        answer
    }

    /// Reads until the server closes the connection (or resets it); what it sent.
    async fn until_closed(s: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&got).into_owned(),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn open(c: &ConnectionCounters) -> u64 {
        c.open.load(Ordering::Relaxed)
    }

    async fn wait_for(what: &str, ok: impl Fn() -> bool) {
        for _ in 0..600 {
            if ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn headers_sent_too_slowly_close_the_connection() {
        let server = start(Limits {
            header_read_timeout: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        let mut s = TcpStream::connect(server.address).await.unwrap();
        // One byte at a time, never finishing: the server must hang up on its own.
        let dribble = async {
            for b in b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: "
                .iter()
                .cycle()
            {
                if s.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), dribble)
            .await
            .expect("the server kept a connection that never finished its headers");
        assert!(fetch(server.address, "/health").await.ends_with("ok"));
    }

    #[tokio::test]
    async fn huge_headers_are_refused_with_431_and_not_buffered() {
        let server = start(Limits::default()).await;
        let mut s = TcpStream::connect(server.address).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: ")
            .await
            .unwrap();
        // 400 KiB of one header, unfinished; the server answers once it passes its limit.
        let chunk = vec![b'a'; 4096];
        for _ in 0..100 {
            if s.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let answer = until_closed(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    }

    #[tokio::test]
    async fn idle_floods_cost_at_most_the_cap_and_health_still_answers() {
        let limits = Limits {
            max_connections: 32,
            max_per_client: 16,
            ..Limits::default()
        };
        let server = start(limits).await;
        // A request in progress is never evicted.
        let held = tokio::spawn(fetch(server.address, "/hold"));
        wait_for("the held request to start", || open(&server.counters) == 1).await;
        // 500 half-sent requests, far past both caps.
        let mut idle = Vec::new();
        for _ in 0..500 {
            let mut s = TcpStream::connect(server.address).await.unwrap();
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nhost").await;
            idle.push(s);
        }
        wait_for("the flood to be accepted", || {
            server.counters.accepted.load(Ordering::Relaxed) == 501
        })
        .await;
        assert!(open(&server.counters) <= 16, "{}", open(&server.counters));
        assert!(server.counters.evicted.load(Ordering::Relaxed) >= 500 - 16);
        assert!(fetch(server.address, "/health").await.ends_with("ok"));
        server.release.notify_one();
        assert!(held.await.unwrap().ends_with("released"));
        // Most of the flood was closed by the server.
        let mut closed = 0;
        for mut s in idle {
            let mut b = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(5), s.read(&mut b)).await
            {
                closed += 1;
            }
        }
        assert!(closed >= 500 - 16, "{closed}");
    }

    #[tokio::test]
    async fn when_every_connection_is_busy_new_ones_are_refused() {
        let server = start(Limits {
            max_connections: 2,
            max_per_client: 2,
            ..Limits::default()
        })
        .await;
        let a = tokio::spawn(fetch(server.address, "/hold"));
        let b = tokio::spawn(fetch(server.address, "/hold"));
        wait_for("two held requests", || open(&server.counters) == 2).await;
        let mut s = TcpStream::connect(server.address).await.unwrap();
        assert_eq!(until_closed(&mut s).await, "");
        assert_eq!(server.counters.refused.load(Ordering::Relaxed), 1);
        server.release.notify_waiters();
        assert!(a.await.unwrap().ends_with("released"));
        assert!(b.await.unwrap().ends_with("released"));
    }

    /// Serves `/stream`: three chunks 400 ms apart, marked [`Streaming`] when `mark`.
    async fn start_streaming(mark: bool) -> Server {
        let router = Router::new().route(
            "/stream",
            get(move || async move {
                let chunks = futures_util::stream::unfold(0u8, |n| async move {
                    if n == 3 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    Some((
                        Ok::<_, std::convert::Infallible>(format!("chunk{n};")),
                        n + 1,
                    ))
                });
                let mut r = axum::response::Response::new(axum::body::Body::from_stream(chunks));
                if mark {
                    r.extensions_mut().insert(Streaming);
                }
                r
            }),
        );
        let limits = Limits {
            idle_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        serve_on_loopback(router, limits, Arc::new(tokio::sync::Notify::new())).await
    }

    #[tokio::test]
    async fn a_streamed_answer_outlives_the_idle_timeout_only_when_marked() {
        let marked = start_streaming(true).await;
        let answer = fetch(marked.address, "/stream").await;
        assert!(answer.contains("chunk2;"), "{answer:?}");
        assert_eq!(marked.counters.idle_closed.load(Ordering::Relaxed), 0);
        // Unmarked, the connection counts as idle once the head is sent, and is cut.
        let unmarked = start_streaming(false).await;
        let answer = fetch(unmarked.address, "/stream").await;
        assert!(!answer.contains("chunk2;"), "{answer:?}");
        assert_eq!(unmarked.counters.idle_closed.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn kept_alive_connections_close_when_idle() {
        let server = start(Limits {
            idle_timeout: Duration::from_millis(300),
            header_read_timeout: Duration::from_secs(60),
            ..Limits::default()
        })
        .await;
        let mut s = TcpStream::connect(server.address).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), until_closed(&mut s))
            .await
            .expect("an idle kept-alive connection stayed open");
        assert!(answer.ends_with("ok"), "{answer:?}");
        assert_eq!(server.counters.idle_closed.load(Ordering::Relaxed), 1);
    }
}
