//! Syslog over TCP (RFC 6587) and TLS (RFC 5425): each connection is an
//! input partition, framed by octet counting or newlines (detected on its
//! first byte). Connections are capped in all (`max_connections`: at the
//! cap a new connection replaces the one that has gone longest without a
//! complete record) and per peer address (`max_connections_per_peer`:
//! beyond it a connection is refused), closed after `idle_timeout` without
//! data and when a record (or a TLS handshake) takes longer than
//! `record_timeout` to arrive, so neither idle nor slow senders can starve
//! real ones. A connection stops being read while the engine queue is
//! full, so a slow engine slows senders instead of growing memory.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::framing::{Framer, Frames};
use super::{Batch, BindEnv, Bound, Listen, SourceCtx, SourceMsg, next_partition};
use crate::options::{count, dur, ms_duration};

/// TLS (RFC 5425) on a TCP source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca_file: Option<PathBuf>,
}

/// Why a TLS setup failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA: {0}")]
    Verifier(String),
}

fn pem_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Builds the TLS acceptor from PEM files (certificate chain, private key,
/// optional client CA for mutual TLS).
pub fn tls_acceptor(tls: &TlsSettings) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_file)
        .map_err(|e| pem_err(&tls.cert_file, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(&tls.cert_file, e))?;
    if certs.is_empty() {
        return Err(pem_err(&tls.cert_file, "no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| pem_err(&tls.key_file, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &tls.client_ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| pem_err(ca, e))? {
                roots.add(cert.map_err(|e| pem_err(ca, e))?)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// `tls = { cert_file, key_file, client_ca_file }` as written.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
}

impl RawTls {
    /// The settings, each file checked to exist (`at` names the section).
    pub fn validate(self, at: &str, errors: &mut Vec<String>) -> TlsSettings {
        for (what, file) in [
            ("cert_file", Some(&self.cert_file)),
            ("key_file", Some(&self.key_file)),
            ("client_ca_file", self.client_ca_file.as_ref()),
        ] {
            if let Some(file) = file
                && let Err(e) = std::fs::metadata(file)
            {
                errors.push(format!("{at}: tls.{what} {}: {e}", file.display()));
            }
        }
        TlsSettings {
            cert_file: self.cert_file,
            key_file: self.key_file,
            client_ca_file: self.client_ca_file,
        }
    }
}

/// `type = "syslog_tcp"`: the section as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    address: Option<String>,
    max_connections: Option<u64>,
    max_connections_per_peer: Option<u64>,
    idle_timeout: Option<String>,
    record_timeout: Option<String>,
    tls: Option<RawTls>,
}

/// A TCP (or TLS) syslog source's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub address: Listen,
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub idle_timeout: Duration,
    pub record_timeout: Duration,
    pub tls: Option<TlsSettings>,
}

impl Settings {
    /// The defaults (`packaging/config.toml`) at `address`.
    pub fn at(address: Listen) -> Settings {
        Settings {
            address,
            max_connections: 256,
            max_connections_per_peer: 32,
            idle_timeout: Duration::from_secs(300),
            record_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}

impl Raw {
    pub fn validate(self, at: &str, errors: &mut Vec<String>) -> Settings {
        let tls = self.tls.map(|t| t.validate(at, errors));
        Settings {
            address: Listen::parse(self.address.as_deref(), at, errors),
            max_connections: count(
                errors,
                &format!("{at}: max_connections"),
                self.max_connections,
                256,
                (1, 65_536),
            ),
            max_connections_per_peer: count(
                errors,
                &format!("{at}: max_connections_per_peer"),
                self.max_connections_per_peer,
                32,
                (1, 65_536),
            ),
            idle_timeout: ms_duration(dur(
                errors,
                &format!("{at}: idle_timeout"),
                self.idle_timeout.as_deref(),
                300_000,
                1_000,
            )),
            record_timeout: ms_duration(dur(
                errors,
                &format!("{at}: record_timeout"),
                self.record_timeout.as_deref(),
                30_000,
                100,
            )),
            tls,
        }
    }
}

/// Binds the listener (or takes the one systemd passed) and loads the TLS
/// certificate, if any.
pub async fn bind_source(
    settings: &Settings,
    ctx: SourceCtx,
    env: &mut BindEnv,
) -> Result<Bound, String> {
    let acceptor = match &settings.tls {
        Some(t) => Some(tls_acceptor(t).map_err(|e| format!("TLS: {e}"))?),
        None => None,
    };
    let listener = match &settings.address {
        Listen::Addr(a) => TcpListener::bind(a).await,
        Listen::Systemd(name) => env.activated.tcp(name).and_then(TcpListener::from_std),
    }
    .map_err(|e| format!("cannot listen on tcp {}: {e}", settings.address))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(source = %ctx.name, address = %local, tls = acceptor.is_some(), "listening (syslog over TCP)");
    let limits = TcpLimits {
        max_connections: settings.max_connections,
        max_connections_per_peer: settings.max_connections_per_peer,
        idle_timeout: settings.idle_timeout,
        record_timeout: settings.record_timeout,
    };
    let tracker = env.tracker.clone();
    Ok(Bound {
        local: Some(local),
        start: Box::new(move || {
            let inner = tracker.clone();
            tracker.spawn(run(ctx, listener, limits, acceptor, inner));
        }),
    })
}

#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub idle_timeout: Duration,
    pub record_timeout: Duration,
}

/// One open connection as the listener sees it.
struct Slot {
    peer: IpAddr,
    /// When its last complete record arrived (or it connected), in ms
    /// since the registry's start, with [`SENT`] set once it sent one: the
    /// smallest value is the connection to replace, and one that never
    /// sent a record goes before any that did.
    active: Arc<AtomicU64>,
    evict: CancellationToken,
}

/// The flag of a connection that sent a complete record.
const SENT: u64 = 1 << 63;

/// The open connections of one listener: counts per peer address, and
/// which has gone longest without a complete record.
struct Conns {
    start: Instant,
    next: u64,
    slots: HashMap<u64, Slot>,
    per_peer: HashMap<IpAddr, usize>,
}

/// Why the listener did not simply take a connection.
enum Admission {
    Taken(u64, Arc<AtomicU64>, CancellationToken),
    /// Taken in place of this one, now told to close.
    Replaced(u64, Arc<AtomicU64>, CancellationToken, IpAddr),
    PeerFull,
}

impl Conns {
    fn new() -> Conns {
        Conns {
            start: Instant::now(),
            next: 0,
            slots: HashMap::new(),
            per_peer: HashMap::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn admit(&mut self, peer: IpAddr, limits: &TcpLimits) -> Admission {
        if self.per_peer.get(&peer).copied().unwrap_or(0) >= limits.max_connections_per_peer {
            return Admission::PeerFull;
        }
        let mut replaced = None;
        if self.slots.len() >= limits.max_connections {
            let idlest = self
                .slots
                .iter()
                .min_by_key(|(id, slot)| (slot.active.load(Ordering::Relaxed), **id))
                .map(|(id, _)| *id);
            if let Some(slot) = idlest.and_then(|id| self.remove(id)) {
                slot.evict.cancel();
                replaced = Some(slot.peer);
            }
        }
        let id = self.next;
        self.next += 1;
        let active = Arc::new(AtomicU64::new(self.now_ms()));
        let evict = CancellationToken::new();
        self.slots.insert(
            id,
            Slot {
                peer,
                active: active.clone(),
                evict: evict.clone(),
            },
        );
        *self.per_peer.entry(peer).or_insert(0) += 1;
        match replaced {
            Some(old) => Admission::Replaced(id, active, evict, old),
            None => Admission::Taken(id, active, evict),
        }
    }

    fn remove(&mut self, id: u64) -> Option<Slot> {
        let slot = self.slots.remove(&id)?;
        if let Some(n) = self.per_peer.get_mut(&slot.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&slot.peer);
            }
        }
        Some(slot)
    }
}

/// A connection's place in the registry, given back when it closes.
struct Registered {
    conns: Arc<Mutex<Conns>>,
    id: u64,
    /// Its last complete record, in the registry's ms.
    active: Arc<AtomicU64>,
    start: Instant,
    evict: CancellationToken,
}

impl Registered {
    /// A complete record arrived.
    fn touch(&self) {
        self.active.store(
            SENT | self.start.elapsed().as_millis() as u64,
            Ordering::Relaxed,
        );
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut conns) = self.conns.lock() {
            conns.remove(self.id);
        }
    }
}

/// Why a connection was closed by the daemon (`connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// Nothing arrived for `idle_timeout`.
    Idle,
    /// A record (or the TLS handshake) took longer than `record_timeout`.
    Slow,
    /// Replaced at `max_connections` by a new connection.
    Evicted,
}

impl Closed {
    fn name(self) -> &'static str {
        match self {
            Closed::Idle => "idle",
            Closed::Slow => "slow",
            Closed::Evicted => "evicted",
        }
    }
}

pub async fn run(
    ctx: SourceCtx,
    listener: TcpListener,
    limits: TcpLimits,
    tls: Option<TlsAcceptor>,
    tracker: TaskTracker,
) {
    let conns = Arc::new(Mutex::new(Conns::new()));
    let start = match conns.lock() {
        Ok(c) => c.start,
        Err(_) => return,
    };
    let refused = ctx
        .metrics
        .connections_refused
        .get_or_create(&ctx.label)
        .clone();
    // A flood logs a few lines a minute with counts, not one per connection.
    let mut log = crate::telemetry::LogLimit::new(5, Duration::from_secs(60));
    let mut limited = |kind: &'static str, line: &dyn Fn(u64)| {
        let admit = log.admit(kind);
        if admit.log || admit.held > 0 {
            line(admit.held);
        }
    };
    loop {
        let (stream, peer) = tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(source = %ctx.name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admission = match conns.lock() {
            Ok(mut c) => c.admit(peer.ip(), &limits),
            Err(_) => break,
        };
        let (id, active, evict) = match admission {
            Admission::PeerFull => {
                refused.inc();
                limited(
                    "per_peer",
                    &|held| tracing::warn!(source = %ctx.name, %peer, held_back = held, "connection refused: this peer has max_connections_per_peer ({}) open", limits.max_connections_per_peer),
                );
                drop(stream);
                continue;
            }
            Admission::Replaced(id, active, evict, old) => {
                limited(
                    "evicted",
                    &|held| tracing::warn!(source = %ctx.name, %peer, replaced_peer = %old, held_back = held, "max_connections ({}) reached: closing the connection longest without a record", limits.max_connections),
                );
                (id, active, evict)
            }
            Admission::Taken(id, active, evict) => (id, active, evict),
        };
        let registered = Registered {
            conns: conns.clone(),
            id,
            active,
            start,
            evict,
        };
        let span = tracing::info_span!("connection", source = %ctx.name, %peer);
        let ctx = ctx.clone();
        let tls = tls.clone();
        tracker.spawn(
            async move {
                connection(ctx, stream, peer, tls, limits, registered).await;
            }
            .instrument(span),
        );
    }
}

async fn connection(
    ctx: SourceCtx,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    limits: TcpLimits,
    registered: Registered,
) {
    let _ = stream.set_nodelay(true);
    let open = ctx
        .metrics
        .connections_open
        .get_or_create(&ctx.label)
        .clone();
    open.inc();
    let partition = next_partition();
    let closed = match tls {
        None => read_loop(&ctx, stream, peer, partition, &limits, &registered).await,
        Some(acceptor) => {
            // A handshake is one record: it must arrive within
            // `record_timeout`, and eviction applies while it does.
            let handshake = tokio::select! {
                _ = registered.evict.cancelled() => Err(Some(Closed::Evicted)),
                r = tokio::time::timeout(limits.record_timeout, acceptor.accept(stream)) => match r {
                    Ok(Ok(tls_stream)) => Ok(tls_stream),
                    Ok(Err(e)) => {
                        tracing::warn!("TLS handshake failed: {e}");
                        Err(None)
                    }
                    Err(_) => {
                        tracing::warn!("TLS handshake timed out");
                        Err(None)
                    }
                },
            };
            match handshake {
                Ok(tls_stream) => {
                    read_loop(&ctx, tls_stream, peer, partition, &limits, &registered).await
                }
                Err(evicted) => {
                    if evicted.is_none() {
                        ctx.metrics
                            .connections_refused
                            .get_or_create(&ctx.label)
                            .inc();
                    }
                    evicted
                }
            }
        }
    };
    if let Some(why) = closed {
        ctx.metrics
            .connections_closed
            .get_or_create(&crate::telemetry::metrics::RejectLabels {
                source: ctx.name.to_string(),
                reason: why.name().to_owned(),
            })
            .inc();
    }
    drop(registered);
    open.dec();
    let _ = ctx.tx.send(SourceMsg::Closed(partition)).await;
}

/// Reads a connection to its end; `Some` when the daemon closed it.
async fn read_loop<S: AsyncRead + Unpin>(
    ctx: &SourceCtx,
    mut stream: S,
    peer: SocketAddr,
    partition: u64,
    limits: &TcpLimits,
    registered: &Registered,
) -> Option<Closed> {
    let mut framer = Framer::new(ctx.max_record_bytes);
    let mut buf = vec![0u8; 64 * 1024];
    let received = ctx
        .metrics
        .records_received
        .get_or_create(&ctx.label)
        .clone();
    let send = |frames: Frames, at: Instant| {
        received.inc_by(frames.len() as u64);
        ctx.tx.send(SourceMsg::Batch(Batch {
            source: ctx.index,
            partition,
            peer: Some(peer),
            received: at,
            frames,
            file: None,
            kafka: None,
        }))
    };
    let mut abandoned = false;
    let mut closed = None;
    // When the record being read began (its first byte), if one is.
    let mut record_since: Option<Instant> = None;
    loop {
        let idle_at = tokio::time::Instant::now() + limits.idle_timeout;
        let slow_at =
            record_since.map(|t| tokio::time::Instant::from_std(t + limits.record_timeout));
        let deadline = slow_at.map_or(idle_at, |s| s.min(idle_at));
        let n = tokio::select! {
            _ = ctx.cancel.cancelled() => {
                abandoned = true;
                break;
            }
            _ = registered.evict.cancelled() => {
                tracing::debug!("closing: replaced at max_connections");
                abandoned = true;
                closed = Some(Closed::Evicted);
                break;
            }
            r = tokio::time::timeout_at(deadline, stream.read(&mut buf)) => match r {
                Err(_) if slow_at.is_some_and(|s| s <= idle_at) => {
                    tracing::debug!("closing: a record took longer than record_timeout");
                    abandoned = true;
                    closed = Some(Closed::Slow);
                    break;
                }
                Err(_) => {
                    tracing::debug!("closing idle connection");
                    closed = Some(Closed::Idle);
                    break;
                }
                Ok(Ok(0)) => break,
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    tracing::debug!("read failed: {e}");
                    break;
                }
            },
        };
        let at = Instant::now();
        let mut frames = Frames::default();
        let result = framer.push(&buf[..n], &mut frames);
        if !frames.is_empty() {
            registered.touch();
        }
        record_since = match (framer.in_record(), frames.is_empty()) {
            (false, _) => None,
            // A record completed and the next began in this read.
            (true, false) => Some(at),
            (true, true) => record_since.or(Some(at)),
        };
        // Awaiting here is the backpressure: no more reads until the
        // engine takes this batch.
        if !frames.is_empty() && send(frames, at).await.is_err() {
            return None;
        }
        if let Err(e) = result {
            // Counted as a `bad_framing` rejection with the frames before it.
            tracing::warn!("{e}; closing the connection");
            return None;
        }
    }
    // What the stream still held: a last line without a newline is a
    // record, a partial octet-counted frame a counted `truncated` (and so
    // is any partial record when the daemon stops reading first).
    let mut frames = Frames::default();
    if abandoned {
        framer.abandon(&mut frames);
    } else {
        framer.finish(&mut frames);
    }
    if !frames.is_empty() {
        let _ = send(frames, Instant::now()).await;
    }
    closed
}
