//! Follows an append-only audit log file (JSON lines or syslog lines),
//! like `tail -F`: it survives rotation by rename (the old file is read to
//! its end, then the new one from its start) and by truncation (read again
//! from the start), and resumes from a saved position after a restart when
//! the file is still the same (device and inode) and not shorter.

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
    dev: u64,
    ino: u64,
    framer: Framer,
    partition: u64,
}

async fn open(
    path: &PathBuf,
    start: Option<u64>,
    at_end: bool,
    max: usize,
) -> std::io::Result<Open> {
    let mut file = tokio::fs::File::open(path).await?;
    let meta = file.metadata().await?;
    let offset = match start {
        Some(o) if o <= meta.len() => o,
        _ if at_end => meta.len(),
        _ => 0,
    };
    file.seek(SeekFrom::Start(offset)).await?;
    Ok(Open {
        file,
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
            // The saved position applies only to the very file it was taken on.
            let start = if first {
                match (src.saved, std::fs::metadata(&src.path)) {
                    (Some(s), Ok(m))
                        if m.dev() == s.dev && m.ino() == s.ino && m.len() >= s.offset =>
                    {
                        Some(s.offset)
                    }
                    _ => None,
                }
            } else {
                Some(0)
            };
            let at_end = first && src.read_from == ReadFrom::End;
            match open(&src.path, start, at_end, ctx.max_record_bytes).await {
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
            Ok(m) if m.len() < o.framer.resume_offset() => {
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
        }),
        kafka: None,
    };
    ctx.tx.send(SourceMsg::Batch(batch)).await.is_ok()
}
