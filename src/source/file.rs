//! Follows an append-only audit log file (JSON lines or syslog lines),
//! like `tail -F`: it survives rotation by rename (the old file is read to
//! its end, then the new one from its start) and by truncation (read again
//! from the start), and resumes from a saved position after a restart when
//! the file is still the same: same device and inode, not shorter than the
//! position, and the same first bytes (a fingerprint of up to
//! [`HEAD_BYTES`], so a copytruncate while the daemon was stopped is seen).
//! When the file was renamed away while stopped, the rotated file is found
//! by its inode next to it and read from the position to its end first.

use std::io::SeekFrom;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::framing::{Framer, Frames};
use super::{Batch, BindEnv, Bound, FileMark, SourceCtx, SourceMsg, next_partition};
use crate::options::{dur, ms_duration};

/// Where a file source starts when it has no saved position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    Beginning,
    End,
}

/// A saved read position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPosition {
    pub dev: u64,
    pub ino: u64,
    pub offset: u64,
    /// The file's first bytes when the position was taken (`None` in
    /// state saved by builds before fingerprints).
    pub head: Option<Head>,
}

/// Bytes of a file's start its fingerprint covers (fewer while the file is
/// shorter).
pub const HEAD_BYTES: usize = 1024;

/// A fingerprint of a file's first `len` bytes (SHA-256).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub len: u32,
    pub sha256: [u8; 32],
}

impl Head {
    /// The fingerprint of what `file` holds of its first [`HEAD_BYTES`].
    pub fn of(file: &std::fs::File) -> std::io::Result<Head> {
        use sha2::Digest;
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; HEAD_BYTES];
        let mut len = 0;
        while len < HEAD_BYTES {
            match file.read_at(&mut buf[len..], len as u64) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Head {
            len: len as u32,
            sha256: sha2::Sha256::digest(&buf[..len]).into(),
        })
    }

    /// True when `file` starts with the bytes this fingerprint was taken of.
    pub fn matches(&self, file: &std::fs::File) -> bool {
        use sha2::Digest;
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; self.len as usize];
        file.read_exact_at(&mut buf, 0).is_ok()
            && <[u8; 32]>::from(sha2::Sha256::digest(&buf)) == self.sha256
    }
}

/// Where reading starts after a restart: the file to open and the offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Resume {
    /// The followed file is the one the position was taken on.
    Same(u64),
    /// It was renamed to this path while the daemon was stopped: read the
    /// rest of it, then the new file from its start.
    Rotated(PathBuf, u64),
    /// It was truncated or replaced and the old one is gone: the new file
    /// from its start.
    Changed,
}

/// Decides where a file source resumes from its saved position, looking
/// at the file now at `path` and, when that is another file, for the saved
/// one by device and inode in the same directory.
pub fn resume(path: &std::path::Path, saved: &SavedPosition) -> Resume {
    let same = |p: &std::path::Path| {
        let file = std::fs::File::open(p).ok()?;
        let m = file.metadata().ok()?;
        (m.dev() == saved.dev
            && m.ino() == saved.ino
            && m.len() >= saved.offset
            && saved.head.is_none_or(|h| h.matches(&file)))
        .then_some(())
    };
    if std::fs::metadata(path).is_ok_and(|m| m.dev() == saved.dev && m.ino() == saved.ino) {
        return match same(path) {
            Some(()) => Resume::Same(saved.offset),
            None => Resume::Changed,
        };
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let rotated = std::fs::read_dir(dir).ok().and_then(|entries| {
        entries.filter_map(Result::ok).find_map(|e| {
            let m = e.metadata().ok()?;
            (m.is_file() && m.dev() == saved.dev && m.ino() == saved.ino).then(|| e.path())
        })
    });
    match rotated {
        Some(old) if same(&old).is_some() => Resume::Rotated(old, saved.offset),
        _ => Resume::Changed,
    }
}

/// `type = "file"`: the section as written.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Raw {
    path: Option<PathBuf>,
    read_from: Option<ReadFrom>,
    poll_interval: Option<String>,
}

/// A followed file's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub path: PathBuf,
    pub read_from: ReadFrom,
    pub poll_interval: Duration,
}

impl Raw {
    pub fn validate(self, at: &str, errors: &mut Vec<String>) -> Settings {
        let path = match self.path {
            Some(p) => p,
            None => {
                errors.push(format!("{at}: `path` is required for type `file`"));
                PathBuf::new()
            }
        };
        Settings {
            path,
            read_from: self.read_from.unwrap_or(ReadFrom::Beginning),
            poll_interval: ms_duration(dur(
                errors,
                &format!("{at}: poll_interval"),
                self.poll_interval.as_deref(),
                250,
                10,
            )),
        }
    }
}

/// Follows the file from its saved position (if the state has one).
pub fn bind_source(settings: &Settings, ctx: SourceCtx, env: &mut BindEnv) -> Bound {
    let src = FileSource {
        path: settings.path.clone(),
        read_from: settings.read_from,
        poll_interval: settings.poll_interval,
        saved: env.file_positions.get(&*ctx.name).copied(),
    };
    tracing::info!(source = %ctx.name, path = %settings.path.display(), "following file");
    let tracker = env.tracker.clone();
    Bound {
        local: None,
        start: Box::new(move || {
            tracker.spawn(run(ctx, src));
        }),
    }
}

pub struct FileSource {
    pub path: PathBuf,
    pub read_from: ReadFrom,
    pub poll_interval: Duration,
    pub saved: Option<SavedPosition>,
}

struct Open {
    file: tokio::fs::File,
    /// The same file, for reading its first bytes.
    head_file: std::fs::File,
    dev: u64,
    ino: u64,
    head: Head,
    framer: Framer,
    partition: u64,
}

impl Open {
    /// Takes the fingerprint again while the file is shorter than
    /// [`HEAD_BYTES`] and has grown past it.
    fn refresh_head(&mut self) {
        if (self.head.len as usize) < HEAD_BYTES
            && self.framer.resume_offset() > u64::from(self.head.len)
            && let Ok(h) = Head::of(&self.head_file)
        {
            self.head = h;
        }
    }
}

async fn open(
    path: &std::path::Path,
    start: Option<u64>,
    at_end: bool,
    max: usize,
) -> std::io::Result<Open> {
    let mut file = tokio::fs::File::open(path).await?;
    let head_file = file.try_clone().await?.into_std().await;
    let meta = file.metadata().await?;
    let offset = match start {
        Some(o) if o <= meta.len() => o,
        _ if at_end => meta.len(),
        _ => 0,
    };
    file.seek(SeekFrom::Start(offset)).await?;
    Ok(Open {
        file,
        head: Head::of(&head_file)?,
        head_file,
        dev: meta.dev(),
        ino: meta.ino(),
        framer: Framer::lines_at(max, offset),
        partition: next_partition(),
    })
}

pub async fn run(ctx: SourceCtx, src: FileSource) {
    let path_text: Arc<str> = src.path.display().to_string().into();
    let mut buf = vec![0u8; 64 * 1024];
    let mut current: Option<Open> = None;
    let mut first = true;
    let mut warned_missing = false;
    loop {
        if current.is_none() {
            // The saved position applies only to the very file it was taken
            // on; `read_from` only to a file the daemon has no position for.
            let (path, start) = match (first, &src.saved) {
                (true, Some(saved)) => match resume(&src.path, saved) {
                    Resume::Same(offset) => (src.path.clone(), Some(offset)),
                    Resume::Rotated(old, offset) => {
                        tracing::info!(source = %ctx.name, path = %path_text, rotated = %old.display(), "the file was rotated while stopped; reading the rest of the rotated file first");
                        (old, Some(offset))
                    }
                    Resume::Changed => {
                        tracing::warn!(source = %ctx.name, path = %path_text, "the file was truncated or replaced while stopped; reading it from its start");
                        (src.path.clone(), Some(0))
                    }
                },
                (true, None) => (src.path.clone(), None),
                (false, _) => (src.path.clone(), Some(0)),
            };
            let at_end = first && src.read_from == ReadFrom::End;
            match open(&path, start, at_end, ctx.max_record_bytes).await {
                Ok(o) => {
                    tracing::info!(source = %ctx.name, path = %path_text, offset = o.framer.resume_offset(), "following file");
                    current = Some(o);
                    first = false;
                    warned_missing = false;
                }
                Err(e) => {
                    if !warned_missing {
                        tracing::warn!(source = %ctx.name, path = %path_text, "cannot open, will retry: {e}");
                        warned_missing = true;
                    }
                    tokio::select! {
                        _ = ctx.cancel.cancelled() => break,
                        _ = tokio::time::sleep(src.poll_interval) => continue,
                    }
                }
            }
        }
        let Some(o) = current.as_mut() else { continue };
        let n = tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            r = o.file.read(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(source = %ctx.name, path = %path_text, "read failed: {e}");
                    0
                }
            },
        };
        if n > 0 {
            if !forward(&ctx, o, &path_text, &buf[..n]).await {
                break;
            }
            continue;
        }
        // At the end of the file: wait, then look for rotation or truncation.
        tokio::select! {
            _ = ctx.cancel.cancelled() => break,
            _ = tokio::time::sleep(src.poll_interval) => {}
        }
        match std::fs::metadata(&src.path) {
            Ok(m) if m.dev() != o.dev || m.ino() != o.ino => {
                // Rotated by rename: drain what the old file still has, then switch.
                if let Ok(n) = o.file.read(&mut buf).await
                    && n > 0
                {
                    if !forward(&ctx, o, &path_text, &buf[..n]).await {
                        break;
                    }
                    continue;
                }
                tracing::info!(source = %ctx.name, path = %path_text, "file rotated; following the new file");
                // The old file is done: its unterminated last line is a record.
                if !finish(&ctx, o, &path_text).await {
                    break;
                }
                let _ = ctx.tx.send(SourceMsg::Closed(o.partition)).await;
                current = None;
            }
            // Shorter than what was read, or rewritten from the start
            // (copytruncate and new lines before this poll).
            Ok(m) if m.len() < o.framer.resume_offset() || !o.head.matches(&o.head_file) => {
                tracing::info!(source = %ctx.name, path = %path_text, "file truncated; reading from the start");
                if !finish(&ctx, o, &path_text).await {
                    break;
                }
                if o.file.seek(SeekFrom::Start(0)).await.is_ok() {
                    o.framer = Framer::lines_at(ctx.max_record_bytes, 0);
                }
            }
            _ => {}
        }
    }
    if let Some(o) = current {
        let _ = ctx.tx.send(SourceMsg::Closed(o.partition)).await;
    }
}

/// Frames bytes read from the open file and sends them on; false when the
/// engine is gone.
async fn forward(ctx: &SourceCtx, o: &mut Open, path: &Arc<str>, bytes: &[u8]) -> bool {
    let at = Instant::now();
    let mut frames = Frames::default();
    // Newline framing cannot fail.
    let _ = o.framer.push(bytes, &mut frames);
    o.refresh_head();
    send(ctx, o, path, frames, at).await
}

/// The file will not grow any more (rotated away, truncated): what its
/// framer holds is sent on.
async fn finish(ctx: &SourceCtx, o: &mut Open, path: &Arc<str>) -> bool {
    let mut frames = Frames::default();
    o.framer.finish(&mut frames);
    send(ctx, o, path, frames, Instant::now()).await
}

async fn send(ctx: &SourceCtx, o: &Open, path: &Arc<str>, frames: Frames, at: Instant) -> bool {
    if frames.is_empty() {
        return true;
    }
    ctx.metrics
        .records_received
        .get_or_create(&ctx.label)
        .inc_by(frames.len() as u64);
    let batch = Batch {
        source: ctx.index,
        partition: o.partition,
        peer: None,
        received: at,
        frames,
        file: Some(FileMark {
            path: path.clone(),
            dev: o.dev,
            ino: o.ino,
            head: o.head,
        }),
        kafka: None,
    };
    ctx.tx.send(SourceMsg::Batch(batch)).await.is_ok()
}
