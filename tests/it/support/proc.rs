//! The daemon as a child process (`mcp-alertd run`), with JSON logs: its
//! bound addresses are read from its log (it binds port 0), never picked
//! beforehand.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub struct Proc {
    pub child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Proc {
    pub fn start(dir: &Path, config: &str) -> Proc {
        Self::launch(dir, dir, config, None)
    }

    /// The daemon with its files (configuration, stdout, log) in `home`
    /// and its state in `state`.
    pub fn start_in(home: &Path, state: &Path, config: &str) -> Proc {
        Self::launch(home, state, config, None)
    }

    /// The daemon started under this umask (`sh -c 'umask M; exec ...'`,
    /// so the child is the daemon itself).
    pub fn start_with_umask(dir: &Path, config: &str, umask: &str) -> Proc {
        Self::launch(dir, dir, config, Some(umask))
    }

    fn launch(dir: &Path, state: &Path, config: &str, umask: Option<&str>) -> Proc {
        let cfg = dir.join("config.toml");
        std::fs::write(
            &cfg,
            super::with_self_monitoring_off(&format!(
                "state_dir = \"{}\"\n{config}",
                state.display()
            )),
        )
        .unwrap();
        let out = dir.join("alerts.jsonl");
        let err = dir.join("daemon.log");
        let bin = assert_cmd::cargo::cargo_bin("mcp-alertd");
        let mut command = match umask {
            None => Command::new(bin),
            Some(mask) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", "umask \"$1\" && shift && exec \"$@\"", "sh", mask])
                    .arg(bin);
                sh
            }
        };
        let child = command
            .args(["--log-format", "json", "run", "--config"])
            .arg(&cfg)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let p = Proc { child, out, err };
        // Exactly "ready" (the metrics line names /readyz first).
        p.wait_log_where("ready", |m| m == "ready");
        p
    }

    pub fn logs(&self) -> Vec<Value> {
        json_lines(&self.err)
    }

    pub fn wait_log(&self, message: &str) -> Value {
        self.wait_log_where(message, |m| m.contains(message))
    }

    fn wait_log_where(&self, message: &str, matches: impl Fn(&str) -> bool) -> Value {
        for _ in 0..1500 {
            if let Some(v) = self
                .logs()
                .into_iter()
                .find(|l| l["message"].as_str().is_some_and(&matches))
            {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "no log line {message:?} in {}",
            std::fs::read_to_string(&self.err).unwrap_or_default()
        );
    }

    pub fn addr(&self, source: &str) -> SocketAddr {
        listening(&self.err, source)
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        metrics_listening(&self.err)
    }

    pub fn alerts(&self) -> Vec<Value> {
        json_lines(&self.out)
    }

    pub fn ids(&self) -> Vec<String> {
        super::sorted_ids(&self.alerts())
    }

    pub fn wait_alerts(&self, n: usize) {
        for _ in 0..1500 {
            if self.alerts().len() >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("expected {n} alerts, got {:?}", self.alerts());
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub fn stop(&mut self) -> i32 {
        self.signal("TERM");
        for _ in 0..1500 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("the daemon did not stop on SIGTERM");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The JSON lines of a file written so far (a daemon's log or alerts).
pub fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The `address` of the first log line that `wanted` picks, waiting
/// until the daemon has logged it.
fn logged_address(log: &Path, what: &str, wanted: impl Fn(&Value) -> bool) -> SocketAddr {
    let mut found = None;
    super::wait_until(what, || {
        found = json_lines(log)
            .into_iter()
            .find(&wanted)
            .and_then(|l| l["address"].as_str().and_then(|a| a.parse().ok()));
        found.is_some()
    });
    found.unwrap()
}

/// The address a source of a daemon bound (it binds port 0 and logs it).
pub fn listening(log: &Path, source: &str) -> SocketAddr {
    logged_address(log, &format!("source `{source}` listening"), |l| {
        l["source"] == source
            && l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("listening"))
    })
}

/// The address of a daemon's metrics endpoint, from its log.
pub fn metrics_listening(log: &Path) -> SocketAddr {
    logged_address(log, "the metrics endpoint", |l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("serving /metrics"))
    })
}
