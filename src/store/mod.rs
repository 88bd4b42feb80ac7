//! The one embedded database file (`redb`) under the state directory
//! (DESIGN §6). This module owns the file; everything else goes through its
//! typed operations.
//!
//! Format (version 1; `meta["format_version"]`):
//! - `alerts`:    alert id → alert JSON. Present while any delivery or dead
//!   letter refers to it (`refs` counts them).
//! - `refs`:      alert id → number of `pending` + `dead` rows naming it.
//! - `pending`:   (sink, alert id) → [`Delivery`] (postcard).
//! - `schedule`:  (sink, next attempt ms, sequence, alert id) → (): the due
//!   index; the sequence (`meta["next_seq"]`) keeps enqueue order among
//!   deliveries due at the same millisecond, so a sink sees alerts in the
//!   order they were raised.
//! - `delivered`: (sink, alert id) → delivered-at ms: exact duplicates are
//!   never delivered twice to a sink; pruned after the retention.
//! - `dead`:      (sink, alert id) → [`DeadLetter`] (postcard).
//! - `state`:     unit name → engine state of one unit (the syslog/file
//!   engine, one Kafka partition, the router) with the source positions it
//!   covers; opaque here, versioned by `crate::store::state`. Written in the
//!   same transaction as the alerts it raised last, so a restart resumes
//!   exactly where the state left off.
//! - `state_rows\x1f<unit>\x1f<table>`: state key → value (postcard), one
//!   table per keyed table of a unit's engine (a rule's keys, the derived
//!   sessions): the rows of an incremental save (`crate::engine::
//!   StateChanges`), the unit's `state` row being its head. A save writes
//!   the rows changed since the one before and drops the tables the head
//!   no longer lists, in the transaction that writes the head.
//! - `journal`:   sequence → [`JournalEntry`] (postcard): every alert the
//!   daemon raised, once, in a hash chain (each entry holds the hash of the
//!   one before); the oldest beyond the limit are pruned
//!   (`meta["journal_first"]` is the first kept).
//! - `journal_ids`: alert id → its sequence (an alert raised again after a
//!   crash is not journaled twice).
//!
//! Invariants: a `pending` row has exactly one `schedule` row; an alert row
//! exists iff `refs > 0`. Every change is one ACID transaction, durable on
//! commit (fsync), so an alert enqueued before a crash is there after it.

pub mod state;

use std::path::{Path, PathBuf};

use redb::{
    ConcurrencyMode, Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable,
    ReadableTableMetadata, TableDefinition, TableHandle,
};
use serde::{Deserialize, Serialize};

use crate::engine::TableChanges;

/// The store format this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;
/// The database file inside the state directory.
pub const FILE_NAME: &str = "mcp-alertd.redb";

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const ALERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("alerts");
const REFS: TableDefinition<&str, u32> = TableDefinition::new("refs");
const PENDING: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("pending");
const SCHEDULE: TableDefinition<(&str, i64, u64, &str), ()> = TableDefinition::new("schedule");
const DELIVERED: TableDefinition<(&str, &str), i64> = TableDefinition::new("delivered");
const DEAD: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("dead");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
/// The journal's table (see the module docs); public so that a test can
/// tamper with it.
pub const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");
const JOURNAL_IDS: TableDefinition<&str, u64> = TableDefinition::new("journal_ids");
/// Where the names of a unit's row tables start (then the unit, the
/// separator and the table).
const ROWS_PREFIX: &str = "state_rows\u{1f}";
const ROWS_SEP: char = '\u{1f}';

fn rows_prefix(unit: &str) -> String {
    format!("{ROWS_PREFIX}{unit}{ROWS_SEP}")
}

fn rows_table(unit: &str, table: &str) -> String {
    format!("{}{table}", rows_prefix(unit))
}

fn rows_def(name: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(name)
}

/// A unit's state for one store write: its `state` row and, for an engine
/// saved incrementally, the changed rows of its tables.
#[derive(Debug)]
pub struct UnitState {
    pub unit: String,
    pub bytes: Vec<u8>,
    /// Every keyed table of the unit's engine with its changed rows; a
    /// stored table not listed is dropped. `None`: the unit has no rows.
    pub tables: Option<Vec<TableChanges>>,
}

impl UnitState {
    /// Bytes written: the `state` row and the changed rows' values.
    pub fn size(&self) -> usize {
        let rows = self.tables.iter().flatten();
        self.bytes.len() + rows.map(TableChanges::value_bytes).sum::<usize>()
    }

    /// A unit saved in one value.
    pub fn whole(unit: impl Into<String>, bytes: Vec<u8>) -> UnitState {
        UnitState {
            unit: unit.into(),
            bytes,
            tables: None,
        }
    }
}

/// Journal entries kept by default (`outbox.journal_entries`).
pub const JOURNAL_ENTRIES: u64 = 100_000;

/// One alert in the journal's hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub seq: u64,
    /// When it was journaled (wall ms).
    pub at_ms: i64,
    pub id: String,
    /// The alert JSON as raised.
    pub alert: Vec<u8>,
    /// The hash of the entry before (zeros for the first ever).
    pub prev: [u8; 32],
    /// [`JournalEntry::digest`] of this entry.
    pub hash: [u8; 32],
}

impl JournalEntry {
    /// SHA-256 over a domain tag and every field but `hash`, each
    /// length-prefixed, so no two entries share a digest.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(b"mcp-alertd journal v1\0");
        h.update(self.seq.to_be_bytes());
        h.update(self.at_ms.to_be_bytes());
        h.update((self.id.len() as u64).to_be_bytes());
        h.update(self.id.as_bytes());
        h.update((self.alert.len() as u64).to_be_bytes());
        h.update(&self.alert);
        h.update(self.prev);
        h.finalize().into()
    }
}

/// What [`Store::verify_journal`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalReport {
    /// The first and last sequence checked (`None`: empty).
    pub range: Option<(u64, u64)>,
    /// The last entry's hash.
    pub head: Option<[u8; 32]>,
    /// The first break: its sequence and what is wrong.
    pub broken: Option<(u64, String)>,
    /// Whether an entry checked has the hash asked for (a head printed
    /// earlier); `false` when none was asked for.
    pub has_head: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Db { path: String, source: redb::Error },
    #[error(
        "store {path}: format version {found} is not supported (this build uses {FORMAT_VERSION}); move the file away to start afresh"
    )]
    Version { path: String, found: u64 },
    #[error("store: corrupt record: {0}")]
    Corrupt(String),
    #[error(
        "store {path}: another process (a running daemon?) has it open for writing; stop it first"
    )]
    InUse { path: String },
    #[error(
        "store {path}: opened read-only (the daemon has it open); stop the daemon to change it"
    )]
    ReadOnly { path: String },
    #[error("store {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl StoreError {
    /// An I/O failure of the file (a full disk, a failing device), after
    /// which the store must be opened again.
    pub fn is_io(&self) -> bool {
        matches!(
            self,
            StoreError::Db {
                source: redb::Error::Io(_) | redb::Error::PreviousIo,
                ..
            } | StoreError::Io { .. }
        )
    }

    /// The failure's kind, for logs rate-limited per kind.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Db {
                source: redb::Error::Io(e),
                ..
            } if e.kind() == std::io::ErrorKind::StorageFull => "no_space",
            StoreError::Db {
                source: redb::Error::Io(_) | redb::Error::PreviousIo,
                ..
            }
            | StoreError::Io { .. } => "io",
            StoreError::InUse { .. } | StoreError::ReadOnly { .. } => "in_use",
            StoreError::Db { .. } | StoreError::Version { .. } | StoreError::Corrupt(_) => "store",
        }
    }
}

/// Delivery state of one alert for one sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Enqueue order (see the `schedule` table).
    pub seq: u64,
    pub attempts: u32,
    /// When the alert entered the outbox (wall ms): the start of `max_age`.
    pub enqueued_ms: i64,
    pub next_ms: i64,
    pub last_error: String,
}

/// An alert a sink gave up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub attempts: u32,
    pub enqueued_ms: i64,
    pub died_ms: i64,
    pub error: String,
}

/// One due delivery, with the alert JSON.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: String,
    pub delivery: Delivery,
    pub alert: Vec<u8>,
}

/// An alert to enqueue for some sinks.
pub struct Enqueue<'a> {
    pub id: &'a str,
    pub json: &'a [u8],
    pub sinks: &'a [String],
}

pub struct Store {
    /// Replaced by a fresh open after an I/O failure (redb refuses every
    /// transaction after one until the file is opened again).
    db: std::sync::RwLock<Db>,
    /// An I/O failure happened and the file was not opened again since.
    failed: std::sync::atomic::AtomicBool,
    path: PathBuf,
    /// Journal entries kept (the oldest beyond are pruned).
    journal_entries: std::sync::atomic::AtomicU64,
}

/// The database as the daemon opens it (the one writer) or as a command
/// that only reads opens it beside a running daemon. Both use redb's
/// `SingleWriter` mode: one writing process, any number of readers
/// following its commits.
enum Db {
    Writer(Database),
    Reader(ReadOnlyDatabase),
    /// Closed after an I/O failure; opened again at the next transaction.
    Closed,
}

fn builder() -> redb::Builder {
    let mut b = Database::builder();
    b.set_concurrency_mode(ConcurrencyMode::SingleWriter);
    b
}

fn db_err(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db {
        path: path.display().to_string(),
        source: e.into(),
    }
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The journal's tables within one write transaction.
struct Journal<'t> {
    store: &'t Store,
    entries: redb::Table<'t, u64, &'static [u8]>,
    ids: redb::Table<'t, &'static str, u64>,
    /// The next sequence and the hash to link to.
    next: u64,
    prev: [u8; 32],
}

impl<'t> Journal<'t> {
    fn open(
        store: &'t Store,
        tx: &'t redb::WriteTransaction,
        meta: &redb::Table<'_, &'static str, u64>,
    ) -> Result<Journal<'t>, StoreError> {
        let entries = tx.open_table(JOURNAL).map_err(|e| store.err(e))?;
        let ids = tx.open_table(JOURNAL_IDS).map_err(|e| store.err(e))?;
        let last = {
            let last = entries.last().map_err(|e| store.err(e))?;
            match last {
                Some((k, v)) => Some((k.value(), decode::<JournalEntry>(v.value())?.hash)),
                None => None,
            }
        };
        let (next, prev) = match last {
            Some((seq, hash)) => (seq + 1, hash),
            None => (
                meta.get("journal_first")
                    .map_err(|e| store.err(e))?
                    .map_or(0, |v| v.value()),
                [0; 32],
            ),
        };
        Ok(Journal {
            store,
            entries,
            ids,
            next,
            prev,
        })
    }

    /// Journals an alert not journaled before.
    fn append(&mut self, alert: &Enqueue<'_>, now_ms: i64) -> Result<(), StoreError> {
        if self
            .ids
            .get(alert.id)
            .map_err(|e| self.store.err(e))?
            .is_some()
        {
            return Ok(());
        }
        let mut entry = JournalEntry {
            seq: self.next,
            at_ms: now_ms,
            id: alert.id.to_owned(),
            alert: alert.json.to_vec(),
            prev: self.prev,
            hash: [0; 32],
        };
        entry.hash = entry.digest();
        self.entries
            .insert(entry.seq, encode(&entry)?.as_slice())
            .map_err(|e| self.store.err(e))?;
        self.ids
            .insert(alert.id, entry.seq)
            .map_err(|e| self.store.err(e))?;
        self.prev = entry.hash;
        self.next += 1;
        Ok(())
    }

    /// Prunes the oldest entries beyond `keep`.
    fn finish(
        mut self,
        keep: u64,
        meta: &mut redb::Table<'_, &'static str, u64>,
    ) -> Result<(), StoreError> {
        let kept = self.entries.len().map_err(|e| self.store.err(e))?;
        for _ in keep..kept {
            let Some((_, v)) = self.entries.pop_first().map_err(|e| self.store.err(e))? else {
                break;
            };
            let old = decode::<JournalEntry>(v.value())?;
            self.ids
                .remove(old.id.as_str())
                .map_err(|e| self.store.err(e))?;
            meta.insert("journal_first", old.seq + 1)
                .map_err(|e| self.store.err(e))?;
        }
        Ok(())
    }
}

impl Store {
    /// Opens (or creates) the store in `state_dir`.
    /// A directory it creates is 0750 and the store file 0600, whatever
    /// the umask: the store holds alerts and the state of every key.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| StoreError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(state_dir)
            .map_err(io(state_dir))?;
        let path = state_dir.join(FILE_NAME);
        // Created empty with its mode first (redb initializes an empty
        // file), so it is never readable by others, not even briefly.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(&path)(e)),
        }
        let db = builder().create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                path: path.display().to_string(),
            },
            e => db_err(&path, e),
        })?;
        let store = Store {
            db: Db::Writer(db).into(),
            failed: false.into(),
            path,
            journal_entries: JOURNAL_ENTRIES.into(),
        };
        store.init()?;
        Ok(store)
    }

    /// Opens the existing store in `state_dir` to read it, beside the
    /// daemon if it runs (`outbox list`, `state list`): every write is
    /// refused with [`StoreError::ReadOnly`].
    pub fn open_read_only(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(FILE_NAME);
        let db = builder()
            .open_read_only(&path)
            .map_err(|e| db_err(&path, e))?;
        let store = Store {
            db: Db::Reader(db).into(),
            failed: false.into(),
            path,
            journal_entries: JOURNAL_ENTRIES.into(),
        };
        let found = {
            let tx = store.begin_read()?;
            let meta = tx.open_table(META).map_err(|e| store.err(e))?;
            meta.get("format_version")
                .map_err(|e| store.err(e))?
                .map(|v| v.value())
        };
        match found {
            Some(FORMAT_VERSION) => Ok(store),
            found => Err(StoreError::Version {
                path: store.path.display().to_string(),
                found: found.unwrap_or(0),
            }),
        }
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.reopen_if_failed()?;
        let db = self.db.read().map_err(|_| self.closed())?;
        match &*db {
            Db::Writer(db) => db.begin_read(),
            Db::Reader(db) => db.begin_read(),
            Db::Closed => return Err(self.closed()),
        }
        .map_err(|e| self.err(e))
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        self.reopen_if_failed()?;
        let db = self.db.read().map_err(|_| self.closed())?;
        match &*db {
            Db::Writer(db) => db.begin_write().map_err(|e| self.err(e)),
            Db::Reader(_) => Err(StoreError::ReadOnly {
                path: self.path.display().to_string(),
            }),
            Db::Closed => Err(self.closed()),
        }
    }

    fn closed(&self) -> StoreError {
        db_err(&self.path, redb::Error::DatabaseClosed)
    }

    /// Whether the store works: no I/O failure since it was last opened.
    pub fn available(&self) -> bool {
        !self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// After an I/O failure (a full disk, a failing device) redb refuses
    /// every transaction until the file is opened again: open it again
    /// (once the space is back this succeeds and the store recovers).
    fn reopen_if_failed(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        if !self.failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut db = self.db.write().map_err(|_| self.closed())?;
        if !self.failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        if matches!(&*db, Db::Reader(_)) {
            self.failed.store(false, Ordering::Relaxed);
            return Ok(());
        }
        // The old handle first: it holds the file's lock.
        *db = Db::Closed;
        let fresh = builder()
            .create(&self.path)
            .map_err(|e| db_err(&self.path, e))?;
        *db = Db::Writer(fresh);
        self.failed.store(false, Ordering::Relaxed);
        tracing::info!(path = %self.path.display(), "store opened again after an I/O failure");
        Ok(())
    }

    /// Marks the store failed when `e` is an I/O failure (the next
    /// transaction opens the file again).
    fn note(&self, e: &StoreError) {
        if e.is_io() {
            self.failed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        let e = db_err(&self.path, e);
        self.note(&e);
        e
    }

    fn init(&self) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            let found = meta
                .get("format_version")
                .map_err(|e| self.err(e))?
                .map(|v| v.value());
            match found {
                None => {
                    meta.insert("format_version", FORMAT_VERSION)
                        .map_err(|e| self.err(e))?;
                }
                Some(v) if v == FORMAT_VERSION => {}
                Some(found) => {
                    return Err(StoreError::Version {
                        path: self.path.display().to_string(),
                        found,
                    });
                }
            }
            // Create every table so readers never meet a missing one.
            tx.open_table(ALERTS).map_err(|e| self.err(e))?;
            tx.open_table(REFS).map_err(|e| self.err(e))?;
            tx.open_table(PENDING).map_err(|e| self.err(e))?;
            tx.open_table(SCHEDULE).map_err(|e| self.err(e))?;
            tx.open_table(DELIVERED).map_err(|e| self.err(e))?;
            tx.open_table(DEAD).map_err(|e| self.err(e))?;
            tx.open_table(STATE).map_err(|e| self.err(e))?;
            tx.open_table(JOURNAL).map_err(|e| self.err(e))?;
            tx.open_table(JOURNAL_IDS).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Enqueues alerts (see [`Store::write`]) with no state change.
    pub fn enqueue(&self, alerts: &[Enqueue<'_>], now_ms: i64) -> Result<usize, StoreError> {
        self.write(alerts, now_ms, &[])
    }

    /// The saved state of every unit, by name.
    pub fn states(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.begin_read()?;
        let table = tx.open_table(STATE).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The saved state of one unit.
    pub fn state(&self, unit: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.begin_read()?;
        let table = tx.open_table(STATE).map_err(|e| self.err(e))?;
        let value = table.get(unit).map_err(|e| self.err(e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// The row tables of a unit, with their rows.
    pub fn state_tables(&self, unit: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let tx = self.begin_read()?;
        let prefix = rows_prefix(unit);
        let names: Vec<String> = tx
            .list_tables()
            .map_err(|e| self.err(e))?
            .map(|h| h.name().to_owned())
            .filter(|t| t.starts_with(&prefix))
            .collect();
        let mut out = Vec::new();
        for name in names {
            let t = tx.open_table(rows_def(&name)).map_err(|e| self.err(e))?;
            let rows = t.len().map_err(|e| self.err(e))?;
            out.push((name[prefix.len()..].to_owned(), rows));
        }
        Ok(out)
    }

    /// Writes a unit's changed rows, after dropping its tables the save no
    /// longer lists and the tables it writes whole.
    fn write_rows(
        &self,
        tx: &redb::WriteTransaction,
        unit: &str,
        tables: &[TableChanges],
    ) -> Result<(), StoreError> {
        let prefix = rows_prefix(unit);
        let listed: std::collections::HashSet<String> =
            tables.iter().map(|t| rows_table(unit, &t.name)).collect();
        let stale: Vec<String> = tx
            .list_tables()
            .map_err(|e| self.err(e))?
            .map(|h| h.name().to_owned())
            .filter(|t| t.starts_with(&prefix) && !listed.contains(t))
            .collect();
        for t in &stale {
            tx.delete_table(rows_def(t)).map_err(|e| self.err(e))?;
        }
        for t in tables {
            let name = rows_table(unit, &t.name);
            if t.reset {
                tx.delete_table(rows_def(&name)).map_err(|e| self.err(e))?;
            }
            let mut table = tx.open_table(rows_def(&name)).map_err(|e| self.err(e))?;
            // In key order: B-tree pages fill up instead of splitting
            // half-empty, and each page is copied once per transaction.
            let mut rows: Vec<(&str, Option<&[u8]>)> = t.rows().collect();
            rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (key, value) in rows {
                match value {
                    Some(v) => table.insert(key, v).map(drop),
                    None => table.remove(key).map(drop),
                }
                .map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }

    /// Forgets the saved state of these units (all with `None`); returns
    /// how many were removed.
    pub fn remove_states(&self, units: Option<&[String]>) -> Result<usize, StoreError> {
        let tx = self.begin_write()?;
        let n;
        {
            let mut table = tx.open_table(STATE).map_err(|e| self.err(e))?;
            let names: Vec<String> = match units {
                Some(u) => u.to_vec(),
                None => {
                    let mut all = Vec::new();
                    for row in table.iter().map_err(|e| self.err(e))? {
                        all.push(row.map_err(|e| self.err(e))?.0.value().to_owned());
                    }
                    all
                }
            };
            let mut removed = 0;
            for name in &names {
                if table
                    .remove(name.as_str())
                    .map_err(|e| self.err(e))?
                    .is_some()
                {
                    removed += 1;
                }
            }
            n = removed;
            let prefixes: Vec<String> = match units {
                Some(u) => u.iter().map(|u| rows_prefix(u)).collect(),
                None => vec![ROWS_PREFIX.to_owned()],
            };
            let tables: Vec<String> = tx
                .list_tables()
                .map_err(|e| self.err(e))?
                .map(|h| h.name().to_owned())
                .filter(|t| prefixes.iter().any(|p| t.starts_with(p.as_str())))
                .collect();
            for t in &tables {
                tx.delete_table(rows_def(t)).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(n)
    }

    /// Enqueues alerts for their sinks and saves unit states, in one
    /// durable transaction. A (sink, id) already pending, delivered or dead
    /// is skipped: exact duplicates never reach a sink twice. Returns the
    /// deliveries added.
    pub fn write(
        &self,
        alerts: &[Enqueue<'_>],
        now_ms: i64,
        states: &[UnitState],
    ) -> Result<usize, StoreError> {
        let tx = self.begin_write()?;
        let mut added = 0;
        if !states.is_empty() {
            let mut table = tx.open_table(STATE).map_err(|e| self.err(e))?;
            for s in states {
                table
                    .insert(s.unit.as_str(), s.bytes.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        for s in states {
            if let Some(tables) = &s.tables {
                self.write_rows(&tx, &s.unit, tables)?;
            }
        }
        {
            let mut a = tx.open_table(ALERTS).map_err(|e| self.err(e))?;
            let mut refs = tx.open_table(REFS).map_err(|e| self.err(e))?;
            let mut pending = tx.open_table(PENDING).map_err(|e| self.err(e))?;
            let mut schedule = tx.open_table(SCHEDULE).map_err(|e| self.err(e))?;
            let delivered = tx.open_table(DELIVERED).map_err(|e| self.err(e))?;
            let dead = tx.open_table(DEAD).map_err(|e| self.err(e))?;
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            let mut journal = Journal::open(self, &tx, &meta)?;
            let mut seq = meta
                .get("next_seq")
                .map_err(|e| self.err(e))?
                .map_or(0, |v| v.value());
            for alert in alerts {
                let mut n = 0;
                for sink in alert.sinks {
                    let key = (sink.as_str(), alert.id);
                    let known = pending.get(key).map_err(|e| self.err(e))?.is_some()
                        || delivered.get(key).map_err(|e| self.err(e))?.is_some()
                        || dead.get(key).map_err(|e| self.err(e))?.is_some();
                    if known {
                        continue;
                    }
                    let fresh = encode(&Delivery {
                        seq,
                        attempts: 0,
                        enqueued_ms: now_ms,
                        next_ms: now_ms,
                        last_error: String::new(),
                    })?;
                    pending
                        .insert(key, fresh.as_slice())
                        .map_err(|e| self.err(e))?;
                    schedule
                        .insert((sink.as_str(), now_ms, seq, alert.id), ())
                        .map_err(|e| self.err(e))?;
                    seq += 1;
                    n += 1;
                }
                journal.append(alert, now_ms)?;
                if n > 0 {
                    let before = refs
                        .get(alert.id)
                        .map_err(|e| self.err(e))?
                        .map_or(0, |v| v.value());
                    refs.insert(alert.id, before + n).map_err(|e| self.err(e))?;
                    if before == 0 {
                        a.insert(alert.id, alert.json).map_err(|e| self.err(e))?;
                    }
                    added += n as usize;
                }
            }
            meta.insert("next_seq", seq).map_err(|e| self.err(e))?;
            let keep = self
                .journal_entries
                .load(std::sync::atomic::Ordering::Relaxed);
            journal.finish(keep, &mut meta)?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(added)
    }

    /// Sets how many journal entries are kept (from the next write on).
    pub fn set_journal_entries(&self, n: u64) {
        self.journal_entries
            .store(n.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Every journal entry, oldest first, to `each` (stops at its error).
    pub fn journal_each(
        &self,
        mut each: impl FnMut(Result<JournalEntry, StoreError>) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        let tx = self.begin_read()?;
        let table = tx.open_table(JOURNAL).map_err(|e| self.err(e))?;
        for row in table.iter().map_err(|e| self.err(e))? {
            let entry = row
                .map_err(|e| self.err(e))
                .and_then(|(_, v)| decode::<JournalEntry>(v.value()));
            each(entry).map_err(|source| StoreError::Io {
                path: "-".to_owned(),
                source,
            })?;
        }
        Ok(())
    }

    /// Checks the journal's chain: sequences without gaps from the first
    /// kept, each entry's hash its content's, each `prev` the hash of the
    /// entry before. Reports the first break.
    /// Checks the chain in one pass; `head`, a hash printed earlier, is
    /// looked for among the entries checked.
    pub fn verify_journal(&self, head: Option<&[u8; 32]>) -> Result<JournalReport, StoreError> {
        let first = {
            let tx = self.begin_read()?;
            let meta = tx.open_table(META).map_err(|e| self.err(e))?;
            meta.get("journal_first")
                .map_err(|e| self.err(e))?
                .map_or(0, |v| v.value())
        };
        let mut report = JournalReport {
            range: None,
            head: None,
            broken: None,
            has_head: false,
        };
        let mut expect = first;
        self.journal_each(|entry| {
            if report.broken.is_some() {
                return Ok(());
            }
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    report.broken = Some((expect, format!("unreadable: {e}")));
                    return Ok(());
                }
            };
            let why = if entry.seq != expect {
                Some(format!(
                    "entry {} where entry {expect} was expected: entries were removed or added",
                    entry.seq
                ))
            } else if entry.digest() != entry.hash {
                Some("its content does not match its hash: the entry was changed".to_owned())
            } else if report.head.is_some_and(|p| p != entry.prev) {
                Some(
                    "its link does not match the hash of the entry before: the chain was changed"
                        .to_owned(),
                )
            } else if report.head.is_none() && entry.seq == 0 && entry.prev != [0; 32] {
                Some("the first entry does not start the chain".to_owned())
            } else {
                None
            };
            if let Some(why) = why {
                report.broken = Some((expect, why));
                return Ok(());
            }
            report.range = Some((report.range.map_or(entry.seq, |r| r.0), entry.seq));
            report.has_head |= head == Some(&entry.hash);
            report.head = Some(entry.hash);
            expect += 1;
            Ok(())
        })?;
        Ok(report)
    }

    /// Up to `limit` deliveries of `sink` due at `now_ms`, earliest first,
    /// and the earliest later attempt time if there is one.
    pub fn due(
        &self,
        sink: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<(Vec<Due>, Option<i64>), StoreError> {
        let tx = self.begin_read()?;
        let schedule = tx.open_table(SCHEDULE).map_err(|e| self.err(e))?;
        let pending = tx.open_table(PENDING).map_err(|e| self.err(e))?;
        let alerts = tx.open_table(ALERTS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        let mut next = None;
        let range = schedule
            .range((sink, i64::MIN, 0u64, "")..)
            .map_err(|e| self.err(e))?;
        for row in range {
            let (key, _) = row.map_err(|e| self.err(e))?;
            let (s, at, _, id) = key.value();
            if s != sink {
                break;
            }
            if at > now_ms || out.len() >= limit {
                next = Some(at);
                break;
            }
            let Some(d) = pending.get((sink, id)).map_err(|e| self.err(e))? else {
                continue;
            };
            let delivery: Delivery = decode(d.value())?;
            let Some(alert) = alerts.get(id).map_err(|e| self.err(e))? else {
                continue;
            };
            out.push(Due {
                id: id.to_owned(),
                delivery,
                alert: alert.value().to_vec(),
            });
        }
        Ok((out, next))
    }

    /// The sink accepted these alerts: remove them from its outbox and
    /// remember them as delivered.
    pub fn ack(
        &self,
        sink: &str,
        done: &[(String, i64, u64)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        {
            let mut pending = tx.open_table(PENDING).map_err(|e| self.err(e))?;
            let mut schedule = tx.open_table(SCHEDULE).map_err(|e| self.err(e))?;
            let mut delivered = tx.open_table(DELIVERED).map_err(|e| self.err(e))?;
            let mut refs = tx.open_table(REFS).map_err(|e| self.err(e))?;
            let mut alerts = tx.open_table(ALERTS).map_err(|e| self.err(e))?;
            for (id, next_ms, seq) in done {
                if pending
                    .remove((sink, id.as_str()))
                    .map_err(|e| self.err(e))?
                    .is_none()
                {
                    continue;
                }
                schedule
                    .remove((sink, *next_ms, *seq, id.as_str()))
                    .map_err(|e| self.err(e))?;
                delivered
                    .insert((sink, id.as_str()), now_ms)
                    .map_err(|e| self.err(e))?;
                release(&mut refs, &mut alerts, id).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Reschedules a failed delivery.
    pub fn retry_later(
        &self,
        sink: &str,
        id: &str,
        old_next_ms: i64,
        delivery: &Delivery,
    ) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        {
            let mut pending = tx.open_table(PENDING).map_err(|e| self.err(e))?;
            let mut schedule = tx.open_table(SCHEDULE).map_err(|e| self.err(e))?;
            schedule
                .remove((sink, old_next_ms, delivery.seq, id))
                .map_err(|e| self.err(e))?;
            schedule
                .insert((sink, delivery.next_ms, delivery.seq, id), ())
                .map_err(|e| self.err(e))?;
            pending
                .insert((sink, id), encode(delivery)?.as_slice())
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Gives up on a delivery: it moves to the dead letters (the alert is
    /// kept for `outbox list` and `outbox retry`).
    pub fn kill(
        &self,
        sink: &str,
        id: &str,
        old: &Delivery,
        letter: &DeadLetter,
    ) -> Result<(), StoreError> {
        let tx = self.begin_write()?;
        {
            let mut pending = tx.open_table(PENDING).map_err(|e| self.err(e))?;
            let mut schedule = tx.open_table(SCHEDULE).map_err(|e| self.err(e))?;
            let mut dead = tx.open_table(DEAD).map_err(|e| self.err(e))?;
            pending.remove((sink, id)).map_err(|e| self.err(e))?;
            schedule
                .remove((sink, old.next_ms, old.seq, id))
                .map_err(|e| self.err(e))?;
            dead.insert((sink, id), encode(letter)?.as_slice())
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Forgets delivered ids older than `before_ms` (dedup retention).
    pub fn prune_delivered(&self, before_ms: i64) -> Result<usize, StoreError> {
        let tx = self.begin_write()?;
        let n;
        {
            let mut delivered = tx.open_table(DELIVERED).map_err(|e| self.err(e))?;
            let old: Vec<(String, String)> = delivered
                .iter()
                .map_err(|e| self.err(e))?
                .filter_map(Result::ok)
                .filter(|(_, at)| at.value() < before_ms)
                .map(|(k, _)| {
                    let (s, id) = k.value();
                    (s.to_owned(), id.to_owned())
                })
                .collect();
            n = old.len();
            for (s, id) in old {
                delivered
                    .remove((s.as_str(), id.as_str()))
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(n)
    }

    /// Counts: (alerts held, pending deliveries, dead letters).
    pub fn counts(&self) -> Result<(u64, u64, u64), StoreError> {
        let tx = self.begin_read()?;
        let a = tx
            .open_table(ALERTS)
            .map_err(|e| self.err(e))?
            .len()
            .map_err(|e| self.err(e))?;
        let p = tx
            .open_table(PENDING)
            .map_err(|e| self.err(e))?
            .len()
            .map_err(|e| self.err(e))?;
        let d = tx
            .open_table(DEAD)
            .map_err(|e| self.err(e))?
            .len()
            .map_err(|e| self.err(e))?;
        Ok((a, p, d))
    }

    /// Every pending delivery and dead letter: (sink, id, state, alert JSON).
    pub fn list(&self) -> Result<Vec<Listed>, StoreError> {
        let tx = self.begin_read()?;
        let alerts = tx.open_table(ALERTS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for (table, dead) in [(PENDING, false), (DEAD, true)] {
            let rows = tx.open_table(table).map_err(|e| self.err(e))?;
            for row in rows.iter().map_err(|e| self.err(e))? {
                let (k, v) = row.map_err(|e| self.err(e))?;
                let (sink, id) = k.value();
                let alert = alerts
                    .get(id)
                    .map_err(|e| self.err(e))?
                    .map(|a| a.value().to_vec())
                    .unwrap_or_default();
                let state = if dead {
                    ListedState::Dead(decode(v.value())?)
                } else {
                    ListedState::Pending(decode(v.value())?)
                };
                out.push(Listed {
                    sink: sink.to_owned(),
                    id: id.to_owned(),
                    state,
                    alert,
                });
            }
        }
        Ok(out)
    }

    /// Moves dead letters (all, or of one sink, or these ids) back to
    /// pending, due now. Returns how many.
    pub fn retry_dead(
        &self,
        sink: Option<&str>,
        ids: &[String],
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let tx = self.begin_write()?;
        let mut n = 0;
        {
            let mut dead = tx.open_table(DEAD).map_err(|e| self.err(e))?;
            let mut pending = tx.open_table(PENDING).map_err(|e| self.err(e))?;
            let mut schedule = tx.open_table(SCHEDULE).map_err(|e| self.err(e))?;
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            let mut seq = meta
                .get("next_seq")
                .map_err(|e| self.err(e))?
                .map_or(0, |v| v.value());
            let chosen = select(&dead, sink, ids).map_err(|e| self.err(e))?;
            for (s, id) in chosen {
                dead.remove((s.as_str(), id.as_str()))
                    .map_err(|e| self.err(e))?;
                let d = Delivery {
                    seq,
                    attempts: 0,
                    enqueued_ms: now_ms,
                    next_ms: now_ms,
                    last_error: String::new(),
                };
                pending
                    .insert((s.as_str(), id.as_str()), encode(&d)?.as_slice())
                    .map_err(|e| self.err(e))?;
                schedule
                    .insert((s.as_str(), now_ms, seq, id.as_str()), ())
                    .map_err(|e| self.err(e))?;
                seq += 1;
                n += 1;
            }
            meta.insert("next_seq", seq).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(n)
    }

    /// Deletes dead letters and/or pending deliveries (all, of one sink, or
    /// these ids). Returns how many.
    pub fn purge(
        &self,
        sink: Option<&str>,
        ids: &[String],
        dead_too: bool,
        pending_too: bool,
    ) -> Result<usize, StoreError> {
        let tx = self.begin_write()?;
        let mut n = 0;
        {
            let mut dead = tx.open_table(DEAD).map_err(|e| self.err(e))?;
            let mut pending = tx.open_table(PENDING).map_err(|e| self.err(e))?;
            let mut schedule = tx.open_table(SCHEDULE).map_err(|e| self.err(e))?;
            let mut refs = tx.open_table(REFS).map_err(|e| self.err(e))?;
            let mut alerts = tx.open_table(ALERTS).map_err(|e| self.err(e))?;
            if dead_too {
                for (s, id) in select(&dead, sink, ids).map_err(|e| self.err(e))? {
                    dead.remove((s.as_str(), id.as_str()))
                        .map_err(|e| self.err(e))?;
                    release(&mut refs, &mut alerts, &id).map_err(|e| self.err(e))?;
                    n += 1;
                }
            }
            if pending_too {
                for (s, id) in select(&pending, sink, ids).map_err(|e| self.err(e))? {
                    if let Some(v) = pending
                        .remove((s.as_str(), id.as_str()))
                        .map_err(|e| self.err(e))?
                    {
                        let d: Delivery = decode(v.value())?;
                        schedule
                            .remove((s.as_str(), d.next_ms, d.seq, id.as_str()))
                            .map_err(|e| self.err(e))?;
                    }
                    release(&mut refs, &mut alerts, &id).map_err(|e| self.err(e))?;
                    n += 1;
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(n)
    }
}

/// A row of `outbox list`.
#[derive(Debug, Clone)]
pub struct Listed {
    pub sink: String,
    pub id: String,
    pub state: ListedState,
    pub alert: Vec<u8>,
}

#[derive(Debug, Clone)]
pub enum ListedState {
    Pending(Delivery),
    Dead(DeadLetter),
}

fn select(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    sink: Option<&str>,
    ids: &[String],
) -> Result<Vec<(String, String)>, redb::StorageError> {
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, _) = row?;
        let (s, id) = k.value();
        if sink.is_none_or(|want| want == s) && (ids.is_empty() || ids.iter().any(|i| i == id)) {
            out.push((s.to_owned(), id.to_owned()));
        }
    }
    Ok(out)
}

fn release(
    refs: &mut redb::Table<&'static str, u32>,
    alerts: &mut redb::Table<&'static str, &'static [u8]>,
    id: &str,
) -> Result<(), redb::StorageError> {
    let n = refs.get(id)?.map_or(0, |v| v.value());
    if n <= 1 {
        refs.remove(id)?;
        alerts.remove(id)?;
    } else {
        refs.insert(id, n - 1)?;
    }
    Ok(())
}
