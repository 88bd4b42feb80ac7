//! Syslog over TCP (RFC 6587) and TLS (RFC 5425): each connection is an
//! input partition, framed by octet counting or newlines (detected on its
//! first byte). Connections are capped (`max_connections`), closed after
//! `idle_timeout` without data, and stop being read while the engine queue
//! is full, so a slow engine slows senders instead of growing memory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
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

/// Connection limits of a TCP source.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
}

/// `type = "syslog_tcp"`: the section as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    address: Option<String>,
    max_connections: Option<u64>,
    idle_timeout: Option<String>,
    tls: Option<RawTls>,
}

/// A TCP (or TLS) syslog source's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub address: Listen,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub tls: Option<TlsSettings>,
}

impl Raw {
    pub fn validate(self, at: &str, errors: &mut Vec<String>) -> Settings {
        let tls = self.tls.map(|t| {
            for (what, file) in [
                ("cert_file", Some(&t.cert_file)),
                ("key_file", Some(&t.key_file)),
                ("client_ca_file", t.client_ca_file.as_ref()),
            ] {
                if let Some(file) = file
                    && let Err(e) = std::fs::metadata(file)
                {
                    errors.push(format!("{at}: tls.{what} {}: {e}", file.display()));
                }
            }
            TlsSettings {
                cert_file: t.cert_file,
                key_file: t.key_file,
                client_ca_file: t.client_ca_file,
            }
        });
        Settings {
            address: Listen::parse(self.address.as_deref(), at, errors),
            max_connections: count(
                errors,
                &format!("{at}: max_connections"),
                self.max_connections,
                256,
                (1, 65_536),
            ),
            idle_timeout: ms_duration(dur(
                errors,
                &format!("{at}: idle_timeout"),
                self.idle_timeout.as_deref(),
                300_000,
                1_000,
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
        idle_timeout: settings.idle_timeout,
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
    pub idle_timeout: Duration,
}

pub async fn run(
    ctx: SourceCtx,
    listener: TcpListener,
    limits: TcpLimits,
    tls: Option<TlsAcceptor>,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refused = ctx
        .metrics
        .connections_refused
        .get_or_create(&ctx.label)
        .clone();
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
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused.inc();
            tracing::warn!(source = %ctx.name, %peer, "connection refused: max_connections ({}) reached", limits.max_connections);
            drop(stream);
            continue;
        };
        let span = tracing::info_span!("connection", source = %ctx.name, %peer);
        let ctx = ctx.clone();
        let tls = tls.clone();
        tracker.spawn(
            async move {
                connection(ctx, stream, peer, tls, limits).await;
                drop(permit);
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
) {
    let _ = stream.set_nodelay(true);
    let open = ctx
        .metrics
        .connections_open
        .get_or_create(&ctx.label)
        .clone();
    open.inc();
    let partition = next_partition();
    match tls {
        None => read_loop(&ctx, stream, peer, partition, &limits).await,
        Some(acceptor) => {
            match tokio::time::timeout(limits.idle_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => read_loop(&ctx, tls_stream, peer, partition, &limits).await,
                Ok(Err(e)) => {
                    ctx.metrics
                        .connections_refused
                        .get_or_create(&ctx.label)
                        .inc();
                    tracing::warn!("TLS handshake failed: {e}");
                }
                Err(_) => {
                    ctx.metrics
                        .connections_refused
                        .get_or_create(&ctx.label)
                        .inc();
                    tracing::warn!("TLS handshake timed out");
                }
            }
        }
    }
    open.dec();
    let _ = ctx.tx.send(SourceMsg::Closed(partition)).await;
}

async fn read_loop<S: AsyncRead + Unpin>(
    ctx: &SourceCtx,
    mut stream: S,
    peer: SocketAddr,
    partition: u64,
    limits: &TcpLimits,
) {
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
    loop {
        let n = tokio::select! {
            _ = ctx.cancel.cancelled() => {
                abandoned = true;
                break;
            }
            r = tokio::time::timeout(limits.idle_timeout, stream.read(&mut buf)) => match r {
                Err(_) => {
                    tracing::debug!("closing idle connection");
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
        // Awaiting here is the backpressure: no more reads until the
        // engine takes this batch.
        if !frames.is_empty() && send(frames, at).await.is_err() {
            return;
        }
        if let Err(e) = result {
            // Counted as a `bad_framing` rejection with the frames before it.
            tracing::warn!("{e}; closing the connection");
            return;
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
}
