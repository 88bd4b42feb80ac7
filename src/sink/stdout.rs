//! The stdout sink: each alert as one JSON line on standard output (or
//! the writer a test hands the daemon). It has no settings.

use std::io::Write;
use std::sync::{Arc, Mutex};

use super::SendError;

/// The shared writer of the stdout sink (a test may pass its own).
pub type SharedWriter = Arc<Mutex<Box<dyn Write + Send>>>;

pub struct Stdout(SharedWriter);

impl Stdout {
    pub fn build(writer: &SharedWriter) -> Stdout {
        Stdout(writer.clone())
    }

    pub fn send(&self, json: &[u8]) -> Result<(), SendError> {
        let mut w = self
            .0
            .lock()
            .map_err(|_| SendError::permanent("stdout writer poisoned"))?;
        w.write_all(json)
            .and_then(|()| w.write_all(b"\n"))
            .and_then(|()| w.flush())
            .map_err(|e| SendError::retry(format!("stdout: {e}")))
    }
}
