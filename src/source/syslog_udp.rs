//! Syslog over UDP (RFC 5426): one datagram is one record; each sender
//! address is an input partition. A UDP sender cannot be slowed down:
//! while the engine queue is full, datagrams are held (up to `queue_bytes`)
//! and handed on together when it has room; beyond that they are dropped
//! and counted.

use std::net::SocketAddr;
use std::time::Instant;

use tokio::net::UdpSocket;

use super::framing::{FrameRef, Frames, is_blank};
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
    queue_bytes: Option<u64>,
}

/// A UDP syslog source's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub address: Listen,
    pub receive_buffer_bytes: Option<usize>,
    /// Bytes of datagrams held while the engine queue is full.
    pub queue_bytes: usize,
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
            queue_bytes: count(
                errors,
                &format!("{at}: queue_bytes"),
                self.queue_bytes,
                DEFAULT_QUEUE_BYTES,
                (0, 1 << 32),
            ),
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
    let queue_bytes = settings.queue_bytes;
    Ok(Bound {
        local: Some(local),
        start: Box::new(move || {
            tracker.spawn(run(ctx, socket, queue_bytes));
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

/// Default bytes of datagrams held while the engine queue is full
/// (`queue_bytes`).
pub const DEFAULT_QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// How often the kernel's drop count of the socket is read.
const KERNEL_DROPS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Datagrams received and not yet handed to the engine, per sender: while
/// the engine queue has room each wakeup's datagrams go on at once; while
/// it is full they gather here (one batch per sender, so the engine
/// catches up in large batches) up to `limit` bytes, beyond which new
/// datagrams are dropped and counted.
struct Held {
    senders: Vec<Sender>,
    bytes: usize,
    limit: usize,
}

/// One sender's held datagrams.
struct Sender {
    peer: SocketAddr,
    /// When the first of them was received.
    at: Instant,
    frames: Frames,
    bytes: usize,
}

/// What a held datagram costs beside its bytes (its frame entry).
const FRAME_BYTES: usize = std::mem::size_of::<FrameRef>();

impl Held {
    /// Holds one datagram of `peer` (received at `at`); `false` when the
    /// limit is reached (the datagram is to be dropped).
    fn push(&mut self, peer: SocketAddr, at: Instant, d: &[u8], max_record_bytes: usize) -> bool {
        let too_large = d.len() > max_record_bytes;
        let cost = FRAME_BYTES + if too_large { 0 } else { d.len() };
        if self.bytes.saturating_add(cost) > self.limit {
            return false;
        }
        let i = match self.senders.iter().position(|s| s.peer == peer) {
            Some(i) => i,
            None => {
                self.senders.push(Sender {
                    peer,
                    at,
                    frames: Frames::default(),
                    bytes: 0,
                });
                self.senders.len() - 1
            }
        };
        let sender = &mut self.senders[i];
        if too_large {
            sender.frames.frames.push(FrameRef::TooLarge(d.len()));
        } else {
            // A trailing NUL, LF or CR LF some senders add is no part of it.
            let d = d.strip_suffix(b"\0").unwrap_or(d);
            let d = d.strip_suffix(b"\n").unwrap_or(d);
            sender
                .frames
                .push_record(d.strip_suffix(b"\r").unwrap_or(d));
        }
        sender.bytes += cost;
        self.bytes += cost;
        true
    }

    /// The oldest sender's datagrams, as a batch.
    fn take(&mut self, ctx: &SourceCtx) -> Option<Batch> {
        if self.senders.is_empty() {
            return None;
        }
        let sender = self.senders.remove(0);
        self.bytes = self.bytes.saturating_sub(sender.bytes);
        Some(Batch {
            source: ctx.index,
            partition: udp_partition(ctx.index, sender.peer),
            peer: Some(sender.peer),
            received: sender.at,
            frames: sender.frames,
            file: None,
            kafka: None,
        })
    }
}

pub async fn run(ctx: SourceCtx, socket: UdpSocket, queue_bytes: usize) {
    let mut buf = vec![0u8; 65_536];
    let mut kernel = KernelDrops::of(&socket);
    let kernel_drops = ctx
        .metrics
        .udp_kernel_drops
        .get_or_create(&ctx.label)
        .clone();
    let mut poll_drops = tokio::time::interval(KERNEL_DROPS_EVERY);
    poll_drops.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let received = ctx
        .metrics
        .records_received
        .get_or_create(&ctx.label)
        .clone();
    let dropped = ctx.metrics.udp_dropped.get_or_create(&ctx.label).clone();
    let mut held = Held {
        senders: Vec::new(),
        bytes: 0,
        limit: queue_bytes,
    };
    loop {
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => break,
            // Datagrams held while the engine queue was full go on as it
            // makes room.
            permit = ctx.tx.reserve(), if !held.senders.is_empty() => {
                let Ok(permit) = permit else { break };
                if let Some(batch) = held.take(&ctx) {
                    permit.send(SourceMsg::Batch(batch));
                }
                continue;
            }
            _ = poll_drops.tick() => {
                if let Some(k) = kernel.as_mut() {
                    kernel_drops.inc_by(k.new_drops());
                }
                continue;
            }
            r = socket.readable() => {
                if let Err(e) = r {
                    tracing::warn!(source = %ctx.name, "UDP socket failed: {e}");
                    break;
                }
            }
        }
        let at = Instant::now();
        let (mut taken, mut lost) = (0usize, 0u64);
        while taken < MAX_BATCH {
            let (n, peer) = match socket.try_recv_from(&mut buf) {
                Ok(v) => v,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(source = %ctx.name, "UDP receive failed: {e}");
                    break;
                }
            };
            let d = &buf[..n];
            // Blank datagrams are no records (as on every source).
            if n <= ctx.max_record_bytes && is_blank(d) {
                continue;
            }
            taken += 1;
            if !held.push(peer, at, d, ctx.max_record_bytes) {
                lost += 1;
            }
        }
        received.inc_by(taken as u64);
        dropped.inc_by(lost);
        if !hand_on(&ctx, &mut held) {
            break;
        }
    }
    // Stopping: what the engine queue takes goes on, the rest is counted.
    hand_on(&ctx, &mut held);
    dropped.inc_by(held.senders.iter().map(|s| s.frames.len() as u64).sum());
}

/// Hands held datagrams on while the engine queue has room; `false` once
/// the engine is gone.
fn hand_on(ctx: &SourceCtx, held: &mut Held) -> bool {
    while !held.senders.is_empty() {
        match ctx.tx.try_reserve() {
            Ok(permit) => {
                if let Some(batch) = held.take(ctx) {
                    permit.send(SourceMsg::Batch(batch));
                }
            }
            Err(tokio::sync::mpsc::error::TrySendError::Full(())) => break,
            Err(tokio::sync::mpsc::error::TrySendError::Closed(())) => return false,
        }
    }
    true
}

/// The kernel's count of datagrams it dropped for one socket (its receive
/// buffer was full), read from `/proc/net/udp` and `/proc/net/udp6` by the
/// socket's inode.
struct KernelDrops {
    inode: u64,
    seen: u64,
}

impl KernelDrops {
    fn of(socket: &UdpSocket) -> Option<KernelDrops> {
        use std::os::fd::AsRawFd;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?;
        let inode = socket_inode(&link.to_string_lossy())?;
        // Drops before the daemon started reading count too: from zero.
        Some(KernelDrops { inode, seen: 0 })
    }

    /// Drops since the last call.
    fn new_drops(&mut self) -> u64 {
        let total = ["/proc/net/udp", "/proc/net/udp6"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .find_map(|table| drops_of(&table, self.inode));
        match total {
            Some(total) => {
                let new = total.saturating_sub(self.seen);
                self.seen = self.seen.max(total);
                new
            }
            None => 0,
        }
    }
}

/// The inode of `socket:[N]`.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The `drops` column of the socket with `inode` in a `/proc/net/udp`
/// table (the 10th column is the inode, the 13th the drops).
pub fn drops_of(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_ascii_whitespace().collect();
        (cols.get(9)?.parse::<u64>().ok()? == inode).then(|| cols.get(12)?.parse().ok())?
    })
}
