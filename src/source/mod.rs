//! Sources turn the outside world into framed records with a position and
//! an input partition (DESIGN §1, §3). They know nothing of audit
//! semantics: records go to the engine in [`Batch`]es over one bounded
//! channel. When it is full, TCP/TLS connections and files stop reading
//! (backpressure) and UDP drops and counts.

pub mod activation;
pub mod file;
pub mod framing;
pub mod kafka;
pub mod lines;
pub mod syslog_tcp;
pub mod syslog_udp;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::event::PartitionId;
use crate::telemetry::metrics::{Metrics, SourceLabel};
use framing::Frames;

/// Where a syslog source listens: an address it binds, or a socket
/// systemd passes (socket activation, `address = "systemd:NAME"` with the
/// socket unit's `FileDescriptorName=`), so the daemon needs no privilege
/// for ports below 1024.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Addr(SocketAddr),
    Systemd(String),
}

/// Default syslog listen address (UDP and TCP): loopback, unprivileged.
pub const DEFAULT_SYSLOG_ADDRESS: &str = "127.0.0.1:5514";

impl Listen {
    /// `address` of a syslog source (default [`DEFAULT_SYSLOG_ADDRESS`]).
    pub fn parse(text: Option<&str>, at: &str, errors: &mut Vec<String>) -> Listen {
        let text = text.unwrap_or(DEFAULT_SYSLOG_ADDRESS);
        if let Some(name) = text.strip_prefix("systemd:") {
            if name.is_empty() || name.contains(':') {
                errors.push(format!(
                    "{at}: address: `systemd:` needs the socket's FileDescriptorName (e.g. \"systemd:syslog-udp\")"
                ));
            }
            return Listen::Systemd(name.to_owned());
        }
        match text.parse::<SocketAddr>() {
            Ok(a) => Listen::Addr(a),
            Err(e) => {
                errors.push(format!(
                    "{at}: address: {e} (write e.g. \"127.0.0.1:5514\", \"[::1]:5514\" or \"systemd:NAME\")"
                ));
                Listen::Addr(SocketAddr::from(([127, 0, 0, 1], 5514)))
            }
        }
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Addr(a) => write!(f, "{a}"),
            Listen::Systemd(name) => write!(f, "systemd:{name}"),
        }
    }
}

/// Where a file batch ends, for saving the resume position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMark {
    pub path: Arc<str>,
    pub dev: u64,
    pub ino: u64,
    /// The fingerprint of the file's first bytes.
    pub head: file::Head,
}

/// Records from one read of one partition.
#[derive(Debug)]
pub struct Batch {
    /// Index of the source in the configuration.
    pub source: usize,
    pub partition: PartitionId,
    pub peer: Option<SocketAddr>,
    /// When the bytes were read: the start of ingest-to-alert latency.
    pub received: Instant,
    pub frames: Frames,
    /// For file sources: the file (with `frames.ends` as offsets).
    pub file: Option<FileMark>,
    /// For Kafka sources: the partition (with `frames.ends` as the
    /// records' offsets).
    pub kafka: Option<KafkaMark>,
}

/// The Kafka partition a batch came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaMark {
    pub topic: Arc<str>,
    pub partition: i32,
}

/// What sources send to the engine.
#[derive(Debug)]
pub enum SourceMsg {
    Batch(Batch),
    /// A partition ended (connection closed, file rotated away).
    Closed(PartitionId),
    /// Kafka partitions were assigned to a source: their saved state is
    /// restored before their first record.
    Assign {
        source: usize,
        partitions: Vec<(Arc<str>, i32)>,
    },
    /// Kafka partitions are being revoked from a source: their state is
    /// saved and released; `done` is signalled once the save is durable.
    Release {
        source: usize,
        partitions: Vec<(Arc<str>, i32)>,
        done: std::sync::mpsc::SyncSender<()>,
    },
}

/// A Kafka partition as the pipeline names it: (source index, topic,
/// partition).
pub type KafkaPartition = (usize, Arc<str>, i32);

/// Offsets whose records are durably covered by saved state (the next
/// offset to read, per partition). The outbox writer raises them after a
/// state commit; Kafka sources store and commit them, so Kafka commits
/// always follow the snapshot.
#[derive(Debug, Default)]
pub struct DurableOffsets {
    inner: Mutex<HashMap<KafkaPartition, i64>>,
}

impl DurableOffsets {
    pub fn raise(&self, partitions: &[(KafkaPartition, i64)]) {
        if let Ok(mut map) = self.inner.lock() {
            for (p, next) in partitions {
                let e = map.entry(p.clone()).or_insert(*next);
                *e = (*e).max(*next);
            }
        }
    }

    /// The durable offsets of a source's partitions.
    pub fn of_source(&self, source: usize) -> Vec<(Arc<str>, i32, i64)> {
        self.inner.lock().map_or_else(
            |_| Vec::new(),
            |map| {
                map.iter()
                    .filter(|((s, _, _), _)| *s == source)
                    .map(|((_, t, p), o)| (t.clone(), *p, *o))
                    .collect()
            },
        )
    }

    /// Forgets a partition (it was released).
    pub fn forget(&self, partition: &KafkaPartition) {
        if let Ok(mut map) = self.inner.lock() {
            map.remove(partition);
        }
    }
}

/// The saved next offset of a Kafka partition (topic, partition) of this
/// source, if the daemon has its state: handed to the source by the
/// composition root, which reads the store.
pub type SavedOffset = Arc<dyn Fn(&str, i32) -> Option<i64> + Send + Sync>;

/// The kinds of source, each with its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceKind {
    SyslogUdp(syslog_udp::Settings),
    SyslogTcp(syslog_tcp::Settings),
    File(file::Settings),
    Kafka(kafka::Settings),
}

impl SourceKind {
    /// Every `type` a source may have.
    pub const TYPES: &str = "syslog_udp, syslog_tcp, file, kafka";

    pub fn type_name(&self) -> &'static str {
        match self {
            SourceKind::SyslogUdp(_) => "syslog_udp",
            SourceKind::SyslogTcp(s) if s.tls.is_some() => "syslog_tls",
            SourceKind::SyslogTcp(_) => "syslog_tcp",
            SourceKind::File(_) => "file",
            SourceKind::Kafka(_) => "kafka",
        }
    }

    /// Binds the source (sockets, consumer) without reading yet: the
    /// daemon binds everything before it reports ready, then starts.
    pub async fn bind(&self, ctx: SourceCtx, env: &mut BindEnv) -> Result<Bound, String> {
        let what = format!("source `{}` ({})", ctx.name, self.type_name());
        match self {
            SourceKind::SyslogUdp(s) => syslog_udp::bind_source(s, ctx, env),
            SourceKind::SyslogTcp(s) => syslog_tcp::bind_source(s, ctx, env).await,
            SourceKind::File(s) => Ok(file::bind_source(s, ctx, env)),
            SourceKind::Kafka(s) => kafka::bind_source(s, ctx, env),
        }
        .map_err(|e| format!("{what}: {e}"))
    }
}

/// What sources take from the daemon when they bind.
pub struct BindEnv {
    /// Sockets systemd passed (socket activation).
    pub activated: activation::Activated,
    /// Where each file source resumes (by source name), from saved state.
    pub file_positions: BTreeMap<String, file::SavedPosition>,
    /// A Kafka source's saved offsets, given its name.
    pub saved_offset: Box<dyn Fn(&str) -> SavedOffset + Send>,
    /// Offsets durably covered by saved state (Kafka commits follow them).
    pub durable: Arc<DurableOffsets>,
    /// Source tasks are spawned here.
    pub tracker: TaskTracker,
}

/// A bound source: its local address (for listeners) and what starts it.
pub struct Bound {
    pub local: Option<SocketAddr>,
    pub start: Box<dyn FnOnce() + Send>,
}

/// What every source task gets.
#[derive(Clone)]
pub struct SourceCtx {
    pub index: usize,
    pub name: Arc<str>,
    pub label: SourceLabel,
    pub max_record_bytes: usize,
    pub tx: mpsc::Sender<SourceMsg>,
    pub metrics: Arc<Metrics>,
    pub cancel: CancellationToken,
}

static NEXT_PARTITION: AtomicU64 = AtomicU64::new(1);

/// A fresh partition id (connections, files). UDP senders use
/// [`udp_partition`], which is stable per sender.
pub fn next_partition() -> PartitionId {
    NEXT_PARTITION.fetch_add(1, Ordering::Relaxed)
}

/// The partition of a UDP sender: a hash of (source, address) with the top
/// bit set, so it never collides with counter-assigned ids.
pub fn udp_partition(source: usize, peer: SocketAddr) -> PartitionId {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = foldhash::fast::FixedState::with_seed(0x6d63_7061_6c65_7274).build_hasher();
    source.hash(&mut h);
    peer.hash(&mut h);
    h.finish() | (1 << 63)
}
