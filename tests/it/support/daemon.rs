//! The daemon in process: started from configuration text on loopback
//! ports chosen by the kernel, its alerts captured in memory.

use std::path::Path;
use std::sync::{Arc, Mutex};

use mcp_alertd::app::Daemon;
use mcp_alertd::config::Config;
use serde_json::Value;

/// Collects the daemon's alert output.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    pub fn alerts(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    pub fn ids(&self) -> Vec<String> {
        super::sorted_ids(&self.alerts())
    }
}

pub async fn start(config_text: &str, state: &Path) -> (Daemon, Capture) {
    let text = format!("state_dir = \"{}\"\n{config_text}", state.display());
    let text = super::with_self_monitoring_off(&text);
    let config = Config::parse(&text).unwrap();
    let rules = config.load_rules().unwrap();
    let out = Capture::default();
    let daemon = Daemon::start(config, rules, Box::new(out.clone()))
        .await
        .unwrap();
    (daemon, out)
}
