//! `mcp-alertd status`: a short human summary of a running daemon, read
//! from its `/metrics` twice (an interval apart, for rates) and
//! `/readyz`: sources, rates, engine, alerts, outbox, Kafka lag.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::pki_types::CertificateDer;

pub use crate::telemetry::scrape::{Sample, parse};

/// Where `status` finds the daemon: its metrics address and, when that
/// speaks TLS (`[metrics] tls`), the certificate the daemon serves (read
/// from the configuration's `cert_file` and pinned: trusted as it is,
/// self-signed or not, and nothing else is).
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub pinned: Option<CertificateDer<'static>>,
}

impl Endpoint {
    pub fn plain(addr: SocketAddr) -> Endpoint {
        Endpoint { addr, pinned: None }
    }

    /// The endpoint of a daemon whose TLS certificate chain is `cert_file`.
    pub fn tls(addr: SocketAddr, cert_file: &std::path::Path) -> Result<Endpoint> {
        use rustls::pki_types::pem::PemObject;
        let cert = CertificateDer::pem_file_iter(cert_file)
            .and_then(|mut certs| certs.next().transpose())
            .with_context(|| format!("metrics.tls: {}", cert_file.display()))?
            .ok_or_else(|| {
                anyhow::anyhow!("metrics.tls: no certificate in {}", cert_file.display())
            })?;
        Ok(Endpoint {
            addr,
            pinned: Some(cert),
        })
    }

    /// GET `path` over HTTP/1.1 (in TLS when pinned); returns (status,
    /// body).
    fn get(&self, path: &str, timeout: Duration) -> Result<(u16, String)> {
        let addr = self.addr;
        let mut tcp = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("cannot connect to the metrics endpoint {addr}"))?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let mut raw = Vec::new();
        match &self.pinned {
            None => {
                tcp.write_all(request.as_bytes())?;
                tcp.read_to_end(&mut raw)
                    .with_context(|| format!("reading {path} from {addr}"))?;
            }
            Some(cert) => {
                let conn = rustls::ClientConnection::new(
                    pinned_client(cert.clone())?,
                    rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
                )?;
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                tls.write_all(request.as_bytes())
                    .with_context(|| format!("TLS to the metrics endpoint {addr}"))?;
                // A peer closing without close_notify ends the body too.
                if let Err(e) = tls.read_to_end(&mut raw)
                    && raw.is_empty()
                {
                    return Err(e).with_context(|| format!("reading {path} from {addr}"));
                }
            }
        }
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| anyhow::anyhow!("{addr}{path}: not an HTTP response"))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{addr}{path}: no HTTP status"))?;
        Ok((status, body.to_owned()))
    }
}

/// A TLS client that trusts exactly `cert` as the server's certificate.
fn pinned_client(cert: CertificateDer<'static>) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { cert, provider }))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Accepts the one pinned certificate; the handshake's signatures are
/// still checked with it.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn sum(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        // Not `.sum()`: a float sum of nothing is -0.0, printed "-0".
        .fold(0.0, |total, v| total + v)
}

fn by_label(samples: &[Sample], name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name) {
        if let Some(v) = s.labels.get(label) {
            *out.entry(v.clone()).or_insert(0.0) += s.value;
        }
    }
    out
}

fn list(map: &BTreeMap<String, f64>) -> String {
    map.iter()
        .filter(|(_, v)| **v > 0.0)
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Renders the summary from two scrapes `secs` apart.
pub fn summary(
    addr: SocketAddr,
    ready: bool,
    before: &[Sample],
    after: &[Sample],
    secs: f64,
) -> String {
    let rate = |name: &str| (sum(after, name) - sum(before, name)).max(0.0) / secs.max(1e-3);
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "mcp-alertd at {addr}: {}",
        if ready { "ready" } else { "NOT READY" }
    ));
    line("sources:".to_owned());
    for source_line in sources(before, after, secs) {
        line(source_line);
    }
    let live: f64 = sum(after, "mcp_alertd_live_keys");
    line(format!(
        "engine: {} events ({:.0}/s), {} late, {} live keys, {} evicted, clock {:.1} s behind the wall clock, {} input partitions",
        sum(after, "mcp_alertd_events_total"),
        rate("mcp_alertd_events_total"),
        sum(after, "mcp_alertd_late_events_total"),
        live,
        sum(after, "mcp_alertd_evicted_keys_total"),
        sum(after, "mcp_alertd_engine_lag_seconds"),
        sum(after, "mcp_alertd_input_partitions"),
    ));
    let alerts = by_label(after, "mcp_alertd_alerts_total", "rule");
    line(format!(
        "alerts: {} ({:.1}/s){}; {} suppressed, {} grouped",
        sum(after, "mcp_alertd_alerts_total"),
        rate("mcp_alertd_alerts_total"),
        if alerts.is_empty() {
            String::new()
        } else {
            format!(": {}", list(&alerts))
        },
        sum(after, "mcp_alertd_alerts_suppressed_total"),
        sum(after, "mcp_alertd_alerts_grouped_total"),
    ));
    let sent = by_label(after, "mcp_alertd_alerts_sent_total", "sink");
    let errors = by_label(after, "mcp_alertd_alert_send_errors_total", "sink");
    line(format!(
        "outbox: {} pending, {} dead letters; sent: {}{}",
        sum(after, "mcp_alertd_outbox_pending_deliveries"),
        sum(after, "mcp_alertd_outbox_dead_letters"),
        if sent.is_empty() {
            "none".to_owned()
        } else {
            list(&sent)
        },
        if errors.values().any(|v| *v > 0.0) {
            format!("; failed attempts: {}", list(&errors))
        } else {
            String::new()
        }
    ));
    let q = |quantile: &str| {
        after
            .iter()
            .find(|s| {
                s.name == "mcp_alertd_ingest_to_alert_latency_seconds"
                    && s.labels.get("quantile").map(String::as_str) == Some(quantile)
            })
            .map(|s| s.value * 1000.0)
    };
    if let (Some(p50), Some(p99)) = (q("0.5"), q("0.99")) {
        line(format!("latency: p50 {p50:.2} ms, p99 {p99:.2} ms"));
    }
    line(format!(
        "state: last save {:.1} kB in {:.1} ms",
        sum(after, "mcp_alertd_state_snapshot_bytes") / 1000.0,
        sum(after, "mcp_alertd_state_snapshot_seconds") * 1000.0
    ));
    out
}

/// One line per source: records and their rate, rejections by reason,
/// unmapped records, drops, connections and Kafka lag.
fn sources(before: &[Sample], after: &[Sample], secs: f64) -> Vec<String> {
    let received = by_label(after, "mcp_alertd_records_received_total", "source");
    let received_before = by_label(before, "mcp_alertd_records_received_total", "source");
    let dropped = by_label(after, "mcp_alertd_udp_datagrams_dropped_total", "source");
    let kernel = by_label(after, "mcp_alertd_udp_kernel_drops_total", "source");
    let open = by_label(after, "mcp_alertd_connections_open", "source");
    let lag = by_label(after, "mcp_alertd_kafka_consumer_lag_records", "source");
    let mut lines = Vec::new();
    for (source, n) in &received {
        let r = (n - received_before.get(source).copied().unwrap_or(0.0)).max(0.0) / secs;
        let rejected: BTreeMap<String, f64> = after
            .iter()
            .filter(|s| {
                s.name == "mcp_alertd_records_rejected_total"
                    && s.labels.get("source") == Some(source)
            })
            .filter_map(|s| Some((s.labels.get("reason")?.clone(), s.value)))
            .collect();
        let mut extra = String::new();
        let unmapped: f64 = after
            .iter()
            .filter(|s| {
                s.name == "mcp_alertd_records_unmapped_total"
                    && s.labels.get("source") == Some(source)
            })
            .map(|s| s.value)
            .sum();
        if unmapped > 0.0 {
            extra.push_str(&format!(", {unmapped} unmapped"));
        }
        if let Some(d) = dropped.get(source).filter(|d| **d > 0.0) {
            extra.push_str(&format!(", {d} dropped (queue full)"));
        }
        if let Some(d) = kernel.get(source).filter(|d| **d > 0.0) {
            extra.push_str(&format!(
                ", {d} dropped by the kernel (receive buffer full)"
            ));
        }
        if let Some(c) = open.get(source) {
            extra.push_str(&format!(", {c} connections"));
        }
        if let Some(l) = lag.get(source) {
            extra.push_str(&format!(", Kafka lag {l} records"));
        }
        let rej = list(&rejected);
        lines.push(format!(
            "  {source:<20} {n} records ({r:.0}/s){}{extra}",
            if rej.is_empty() {
                String::new()
            } else {
                format!(", rejected: {rej}")
            }
        ));
    }
    lines
}

/// Scrapes the daemon at `addr` twice, `interval` apart, and prints the
/// summary. Exit code 0 when ready, 1 when not (or unreachable).
pub fn run(at: &Endpoint, interval: Duration, out: &mut dyn Write) -> Result<u8> {
    let (addr, timeout) = (at.addr, Duration::from_secs(5));
    let (_, first) = at.get("/metrics", timeout)?;
    // A one-shot command on the main thread: no runtime to stall.
    #[allow(clippy::disallowed_methods)]
    std::thread::sleep(interval);
    let started = std::time::Instant::now();
    let (_, second) = at.get("/metrics", timeout)?;
    let secs = interval.as_secs_f64() + started.elapsed().as_secs_f64();
    let (ready, _) = at.get("/readyz", timeout)?;
    let ready = ready == 200;
    write!(
        out,
        "{}",
        summary(addr, ready, &parse(&first), &parse(&second), secs)
    )?;
    Ok(if ready { 0 } else { 1 })
}
