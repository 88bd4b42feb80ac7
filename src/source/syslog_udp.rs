//! Syslog over UDP (RFC 5426): one datagram is one record; each sender
//! address is an input partition. When the engine queue is full the
//! datagram is dropped and counted: a UDP sender cannot be slowed down.

use std::net::SocketAddr;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc::error::TrySendError;

use super::framing::{FrameRef, Frames};
use super::{Batch, BindEnv, Bound, Listen, SourceCtx, SourceMsg, udp_partition};
use crate::options::count;

/// Binds the socket (with an optional receive buffer size) before the
/// daemon reports ready.
/// Default UDP receive buffer requested (the kernel caps it at
/// `net.core.rmem_max`): bursts queue in the kernel instead of being lost.
pub const DEFAULT_RECEIVE_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// `type = "syslog_udp"`: the section as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    address: Option<String>,
    receive_buffer_bytes: Option<u64>,
}

/// A UDP syslog source's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub address: Listen,
    pub receive_buffer_bytes: Option<usize>,
}

impl Raw {
    pub fn validate(self, at: &str, errors: &mut Vec<String>) -> Settings {
        Settings {
            address: Listen::parse(self.address.as_deref(), at, errors),
            receive_buffer_bytes: self.receive_buffer_bytes.map(|b| {
                count(
                    errors,
                    &format!("{at}: receive_buffer_bytes"),
                    Some(b),
                    0,
                    (4096, 1 << 30),
                )
            }),
        }
    }
}

/// Binds the socket (or takes the one systemd passed).
pub fn bind_source(
    settings: &Settings,
    ctx: SourceCtx,
    env: &mut BindEnv,
) -> Result<Bound, String> {
    let socket = match &settings.address {
        Listen::Addr(a) => bind(*a, settings.receive_buffer_bytes),
        Listen::Systemd(name) => env.activated.udp(name).and_then(UdpSocket::from_std),
    }
    .map_err(|e| format!("cannot listen on udp {}: {e}", settings.address))?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(source = %ctx.name, address = %local, "listening (syslog over UDP)");
    let tracker = env.tracker.clone();
    Ok(Bound {
        local: Some(local),
        start: Box::new(move || {
            tracker.spawn(run(ctx, socket));
        }),
    })
}

pub fn bind(addr: SocketAddr, receive_buffer_bytes: Option<usize>) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if let Some(bytes) = receive_buffer_bytes {
        socket.set_recv_buffer_size(bytes)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Datagrams taken per wakeup before they are handed on; batching them
/// keeps the per-datagram cost to one `recvfrom`.
const MAX_BATCH: usize = 512;

pub async fn run(ctx: SourceCtx, socket: UdpSocket) {
    let mut buf = vec![0u8; 65_536];
    let received = ctx
        .metrics
        .records_received
        .get_or_create(&ctx.label)
        .clone();
    let dropped = ctx.metrics.udp_dropped.get_or_create(&ctx.label).clone();
    // Datagrams of the current wakeup, per sender (usually one or a few).
    let mut pending: Vec<(SocketAddr, Frames)> = Vec::new();
    'outer: loop {
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            r = socket.readable() => {
                if let Err(e) = r {
                    tracing::warn!(source = %ctx.name, "UDP socket failed: {e}");
                    break;
                }
            }
        }
        let at = Instant::now();
        let mut taken = 0;
        while taken < MAX_BATCH {
            let (n, peer) = match socket.try_recv_from(&mut buf) {
                Ok(v) => v,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(source = %ctx.name, "UDP receive failed: {e}");
                    break;
                }
            };
            taken += 1;
            let frames = match pending.iter_mut().find(|(p, _)| *p == peer) {
                Some((_, f)) => f,
                None => {
                    pending.push((peer, Frames::default()));
                    match pending.last_mut() {
                        Some((_, f)) => f,
                        None => continue,
                    }
                }
            };
            if n > ctx.max_record_bytes {
                frames.frames.push(FrameRef::TooLarge(n));
            } else {
                let d = &buf[..n];
                let d = d.strip_suffix(b"\n").unwrap_or(d);
                frames.push_record(d.strip_suffix(b"\r").unwrap_or(d));
            }
        }
        received.inc_by(taken as u64);
        for (peer, frames) in pending.drain(..) {
            let count = frames.len() as u64;
            let batch = Batch {
                source: ctx.index,
                partition: udp_partition(ctx.index, peer),
                peer: Some(peer),
                received: at,
                frames,
                file: None,
                kafka: None,
            };
            match ctx.tx.try_send(SourceMsg::Batch(batch)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    dropped.inc_by(count);
                }
                Err(TrySendError::Closed(_)) => break 'outer,
            }
        }
    }
}
