//! The live console: the injection meter's windows, cap and sustained
//! flag, the recent alerts list, the JSON API and the page (over plain
//! HTTP on loopback, and with a token and TLS), and the Grafana dashboard.

use mcp_alertd::alert::Alert;
use mcp_alertd::console::meter::{Denial, HOUR_MS, Meter, TOP, Window};
use mcp_alertd::console::{AlertFilter, Console, ConsoleSettings};

fn deny(m: &mut Meter, ts: i64, agent: &str, session: &str) {
    m.deny(Denial {
        ts,
        tenant: "t",
        agent_id: Some(agent),
        session_id: Some(session),
    });
}

#[test]
fn hour_and_day_windows_and_the_sparkline() {
    let mut m = Meter::new(100, 100);
    let base = 1_000 * HOUR_MS;
    // Two denials 5 hours ago, three in the last hour.
    deny(&mut m, base - 5 * HOUR_MS, "a", "s1");
    deny(&mut m, base - 5 * HOUR_MS + 1, "a", "s1");
    for i in 0..3 {
        deny(&mut m, base + i, "a", "s2");
    }
    let top = m.top_agents(Window::Day);
    assert_eq!(top.len(), 1);
    let a = &top[0];
    assert_eq!((a.hour, a.day, a.total), (3, 5, 5));
    assert_eq!(a.sparkline.len(), 24);
    assert_eq!(a.sparkline[23], 3);
    assert_eq!(a.sparkline[18], 2);
    assert_eq!(a.streak_hours, 1);
    assert!(!a.sustained);
    let hour = m.top_sessions(Window::Hour);
    assert_eq!(hour.len(), 1, "s1 had nothing in the last hour");
    assert_eq!(hour[0].session_id.as_deref(), Some("s2"));
    // A day later everything has left the windows.
    deny(&mut m, base + 25 * HOUR_MS, "b", "s3");
    let top = m.top_agents(Window::Day);
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].agent_id, "b");
}

#[test]
fn sustained_after_three_hours_in_a_row() {
    let mut m = Meter::new(100, 100);
    let base = 500 * HOUR_MS;
    for h in 0..4 {
        deny(&mut m, base + h * HOUR_MS, "a", "s");
    }
    deny(&mut m, base + 3 * HOUR_MS, "b", "x");
    let top = m.top_agents(Window::Day);
    assert_eq!(top[0].agent_id, "a");
    assert_eq!(top[0].streak_hours, 4);
    assert!(top[0].sustained);
    assert!(!top[1].sustained);
}

#[test]
fn the_cap_keeps_the_heavy_hitters() {
    let mut m = Meter::new(32, 32);
    for i in 0..10 {
        deny(&mut m, 1_000 + i, "heavy", "hs");
    }
    for i in 0..200 {
        deny(&mut m, 2_000 + i, &format!("light-{i}"), &format!("s-{i}"));
    }
    let ((agents, sessions), (ev_a, ev_s), denials) = m.sizes();
    assert!(agents <= 32 && sessions <= 32);
    assert!(ev_a >= 169 && ev_s >= 169);
    assert_eq!(denials, 210);
    let top = m.top_agents(Window::Day);
    assert_eq!(top[0].agent_id, "heavy");
    assert_eq!(top[0].day, 10);
    assert!(top.len() <= TOP);
}

#[test]
fn an_unclaimed_identity_is_unknown_and_no_session_is_counted_as_none() {
    let mut m = Meter::new(10, 10);
    m.deny(Denial {
        ts: 5,
        tenant: "t",
        agent_id: None,
        session_id: None,
    });
    assert_eq!(m.top_agents(Window::Hour)[0].agent_id, "unknown");
    assert!(m.top_sessions(Window::Hour).is_empty());
}

#[test]
fn late_denials_count_in_their_own_bucket() {
    let mut m = Meter::new(10, 10);
    let base = 100 * HOUR_MS;
    deny(&mut m, base, "a", "s");
    deny(&mut m, base - 2 * HOUR_MS, "a", "s");
    let a = &m.top_agents(Window::Day)[0];
    assert_eq!(a.sparkline[21], 1);
    assert_eq!(a.sparkline[23], 1);
    assert_eq!(a.hour, 1);
}

fn alert(rule: &str, tenant: &str, ts: i64) -> Alert {
    Alert {
        id: format!("{rule}-{ts}"),
        rule: rule.to_owned(),
        title: "t".to_owned(),
        severity: mcp_alertd::alert::Severity::High,
        tenant: tenant.to_owned(),
        key: Default::default(),
        ts,
        detected_at: None,
        count: 1,
        window_start: None,
        window_end: None,
        summary: "s".to_owned(),
        events: Vec::new(),
    }
}

#[test]
fn the_recent_list_is_capped_filtered_and_newest_first() {
    let rules = mcp_alertd::engine::RuleSet::embedded().unwrap();
    let settings = ConsoleSettings {
        recent_alerts: 3,
        ..ConsoleSettings::default()
    };
    let c = Console::new(&settings, &rules);
    let alerts: Vec<Alert> = (0..5)
        .map(|i| {
            alert(
                if i % 2 == 0 {
                    "auth_failure_burst"
                } else {
                    "x"
                },
                "t1",
                i,
            )
        })
        .collect();
    c.raised(&alerts);
    let all = c.alerts(&AlertFilter::default());
    assert_eq!(
        all.iter().map(|l| l.seq).collect::<Vec<_>>(),
        vec![5, 4, 3],
        "the two oldest left"
    );
    assert!(all[0].advice.is_some(), "a default rule has advice");
    assert!(all[1].advice.is_none());
    let f = AlertFilter {
        rule: Some("auth_failure_burst".to_owned()),
        ..AlertFilter::default()
    };
    assert_eq!(c.alerts(&f).len(), 2);
    let f = AlertFilter {
        after_seq: Some(4),
        ..AlertFilter::default()
    };
    assert_eq!(c.alerts(&f).len(), 1);
    let f = AlertFilter {
        tenant: Some("other".to_owned()),
        ..AlertFilter::default()
    };
    assert!(c.alerts(&f).is_empty());
}

#[test]
fn the_windows_follow_the_engine_clock() {
    let mut m = Meter::new(10, 10);
    deny(&mut m, 10 * HOUR_MS, "a", "s");
    assert_eq!(m.top_agents(Window::Hour).len(), 1);
    m.advance(10 * HOUR_MS + 2 * HOUR_MS);
    assert!(m.top_agents(Window::Hour).is_empty(), "an hour passed");
    assert_eq!(m.top_agents(Window::Day)[0].day, 1);
    m.advance(10 * HOUR_MS + 30 * HOUR_MS);
    assert!(m.top_agents(Window::Day).is_empty(), "a day passed");
    m.advance(0);
    assert_eq!(m.now_ms(), Some(40 * HOUR_MS), "never back");
}

// ---- the daemon: API, page, access ------------------------------------

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::daemon::start;
use crate::support::{append, get_blocking, wait_for};

/// The body of an HTTP/1.1 response read whole (the server closes).
fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A GET of the API as JSON (plain HTTP, no token).
fn api(addr: SocketAddr, path: &str) -> Value {
    let r = get_blocking(addr, path);
    assert_eq!(status(&r), 200, "{path}: {r}");
    serde_json::from_str(body(&r)).unwrap_or_else(|e| panic!("{path}: {e}: {r}"))
}

/// The live injection scenario, dated back from `t` (epoch ms, half past
/// an hour): agent `agent-injected` denied once in each of the three
/// hours before `t` (session `sess-1`) and six times in the 25 s up to `t`
/// (session `sess-2`), agent `agent-careful` once ten minutes before `t`.
fn injection(t: i64) -> Vec<String> {
    let line = |ts: i64, agent: &str, session: &str, tool: &str| {
        format!(
            r#"{{"ts":{ts},"event":"tool.denied","tenant":"acme","agent_id":"{agent}","session_id":"{session}","tool":"{tool}","server":"mcp-1","reason":"not_in_allowlist"}}"#
        )
    };
    let mut lines = Vec::new();
    for h in (1..=3).rev() {
        lines.push(line(
            t - h * HOUR_MS,
            "agent-injected",
            "sess-1",
            "shell_exec",
        ));
    }
    lines.push(line(t - 600_000, "agent-careful", "sess-3", "send_email"));
    for i in (0..6).rev() {
        lines.push(line(
            t - i * 5_000,
            "agent-injected",
            "sess-2",
            "read_secrets",
        ));
    }
    lines
}

/// The support's file source, with the metrics (and console) on.
fn config(log: &Path) -> String {
    crate::support::file_config(log).replace("enabled = false", "address = \"127.0.0.1:0\"")
}

/// Starts a daemon on `examples/audit.jsonl` followed by the injection
/// scenario; returns it once every line went through and every alert was
/// delivered, with its alerts and the scenario's newest time.
async fn daemon_on_examples(
    dir: &Path,
) -> (
    mcp_alertd::app::Daemon,
    crate::support::daemon::Capture,
    usize,
    i64,
) {
    let log = dir.join("audit.jsonl");
    let examples =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/audit.jsonl"))
            .unwrap();
    let mut lines: Vec<String> = examples.lines().map(str::to_owned).collect();
    // Half past the last full hour (30 to 90 minutes ago): the scenario's
    // burst stays inside one hour bucket whatever the time of the run.
    let now = jiff::Timestamp::now().as_millisecond();
    let t = now.div_euclid(HOUR_MS) * HOUR_MS - 30 * 60_000;
    lines.extend(injection(t));
    append(&log, &lines);
    let (daemon, out) = start(&config(&log), &dir.join("state")).await;
    let m = daemon.metrics_addr().unwrap();
    let n = lines.len();
    wait_for("every line read and every alert delivered", || {
        let h = api(m, "/api/health");
        h["sources"][0]["received"] == n
            && h["outbox"]["pending"] == 0
            && h["alerts_total"].as_u64() == Some(out.alerts().len() as u64)
            && out.alerts().iter().any(|a| {
                a["rule"] == "session_injection_incident" && a["key"]["session_id"] == "sess-2"
            })
    })
    .await;
    (daemon, out, n, t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_shows_the_meter_the_alerts_and_the_health() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, out, n, t) = daemon_on_examples(dir.path()).await;
    let m = daemon.metrics_addr().unwrap();

    let agents = api(m, "/api/agents/top?window=hour");
    assert_eq!(agents["window"], "hour");
    let top = agents["top"].as_array().unwrap();
    // The examples' denials are months old: only the scenario is in the
    // windows.
    assert_eq!(top.len(), 2, "{agents}");
    assert_eq!(top[0]["agent_id"], "agent-injected");
    assert_eq!(
        (&top[0]["hour"], &top[0]["day"], &top[0]["total"]),
        (&Value::from(6), &Value::from(9), &Value::from(9))
    );
    assert_eq!(top[0]["streak_hours"], 4);
    assert_eq!(top[0]["sustained"], true);
    let spark: Vec<u64> = top[0]["sparkline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(spark.len(), 24);
    assert_eq!(spark.iter().sum::<u64>(), 9);
    assert_eq!(&spark[20..], &[1, 1, 1, 6]);
    assert_eq!(top[1]["agent_id"], "agent-careful");
    assert_eq!(top[1]["sustained"], false);
    assert_eq!(
        agents["denials"],
        16 + 10,
        "the examples' 16 and the scenario's 10"
    );
    assert_eq!(agents["now"], mcp_alertd::alert::format_ts(t));

    let sessions = api(m, "/api/sessions/top?window=day");
    assert_eq!(sessions["threshold"], 5);
    let rows: Vec<(String, u64)> = sessions["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["session_id"].as_str().unwrap().to_owned(),
                r["total"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("sess-2".to_owned(), 6),
            ("sess-1".to_owned(), 3),
            ("sess-3".to_owned(), 1)
        ]
    );
    let bad = get_blocking(m, "/api/agents/top?window=week");
    assert_eq!(status(&bad), 400, "{bad}");

    // Alerts: the newest first, each with its advice; filters.
    let alerts = api(m, "/api/alerts");
    let listed = alerts["alerts"].as_array().unwrap();
    let raised = out.alerts();
    assert_eq!(listed.len(), raised.len());
    let seqs: Vec<u64> = listed.iter().map(|a| a["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "newest first");
    let mut ids: Vec<&str> = listed.iter().map(|a| a["id"].as_str().unwrap()).collect();
    let mut want: Vec<&str> = raised.iter().map(|a| a["id"].as_str().unwrap()).collect();
    ids.sort();
    want.sort();
    assert_eq!(ids, want, "the console lists what was raised");
    let incident = listed
        .iter()
        .find(|a| a["rule"] == "session_injection_incident" && a["key"]["session_id"] == "sess-2")
        .unwrap();
    assert!(
        incident["advice"]
            .as_str()
            .unwrap()
            .contains("end the session"),
        "{incident}"
    );
    let only = api(m, "/api/alerts?rule=unauthorized_tool_attempt&tenant=acme");
    let want = raised
        .iter()
        .filter(|a| a["rule"] == "unauthorized_tool_attempt" && a["tenant"] == "acme")
        .count();
    assert!(want >= 10, "the scenario's ten denials each raise one");
    assert_eq!(only["alerts"].as_array().unwrap().len(), want);
    let crit = api(m, "/api/alerts?severity=critical&limit=2");
    assert_eq!(crit["alerts"].as_array().unwrap().len(), 2);
    assert!(
        crit["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["severity"] == "critical")
    );
    let since = api(
        m,
        &format!(
            "/api/alerts?since={}",
            mcp_alertd::alert::format_ts(t - 10_000)
        ),
    );
    assert!(
        since["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["ts"].as_str().unwrap() >= mcp_alertd::alert::format_ts(t - 10_000).as_str())
    );
    let bad = get_blocking(m, "/api/alerts?since=yesterday");
    assert_eq!(status(&bad), 400, "{bad}");

    // Health: the source's counts, rejections by reason, the sink.
    let h = api(m, "/api/health");
    let src = &h["sources"][0];
    assert_eq!(src["name"], "audit");
    assert_eq!(src["received"], n);
    assert_eq!(src["rejected_by_reason"]["missing_field"], 1);
    assert_eq!(src["rejected_by_reason"]["not_json"], 1);
    assert_eq!(src["decoded"], n - 2);
    assert_eq!(h["outbox"]["sinks"][0]["name"], "stdout");
    assert_eq!(h["outbox"]["sinks"][0]["sent"], raised.len());
    assert!(h["live_keys"]["session_injection_incident"].is_u64());
    assert_eq!(h["ready"], true);
    daemon.shutdown().await.unwrap();
}

/// Debian's Chromium (scripts/test.sh installs it), or `MCP_ALERTD_CHROMIUM`.
fn chromium() -> String {
    let path = std::env::var("MCP_ALERTD_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&path).exists(),
        "{path} not found: install Debian's chromium (scripts/test.sh does)"
    );
    path
}

/// Runs headless Chromium on `url` with `args` (a fresh profile, nothing
/// contacted but loopback) and returns its standard output.
async fn headless(url: String, profile: &Path, args: Vec<String>) -> String {
    let (bin, profile) = (chromium(), profile.to_owned());
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                // Long enough for the page's first fetches; the budget is
                // virtual time, paused while requests are in flight.
                "--virtual-time-budget=3000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .arg(url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    })
    .await
    .unwrap()
}

/// Saves a screenshot of `url`, 1440 pixels wide and `height` high, as
/// `png` (a PNG it checks was written).
async fn screenshot(url: String, profile: &Path, png: &Path, height: u32) {
    let _ = std::fs::remove_file(png);
    let args = vec![
        format!("--screenshot={}", png.display()),
        format!("--window-size=1440,{height}"),
    ];
    headless(url, profile, args).await;
    let bytes = std::fs::read(png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG at {}", png.display());
}

/// The text of the element holding `attr` (e.g. `data-agent="x"`), up to
/// the end of its row.
fn row<'a>(dom: &'a str, attr: &str) -> &'a str {
    let at = dom
        .find(attr)
        .unwrap_or_else(|| panic!("no `{attr}` in the page:\n{dom}"));
    let rest = &dom[at..];
    &rest[..rest.find("</tr>").unwrap_or(rest.len())]
}

/// The text of the cell marked `data-field="<field>"` in `html`.
fn field<'a>(html: &'a str, name: &str) -> &'a str {
    let marker = format!("data-field=\"{name}\">");
    let at = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no field `{name}` in {html}"))
        + marker.len();
    let rest = &html[at..];
    &rest[..rest.find('<').unwrap_or(rest.len())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_a_real_browser_shows_the_meter_the_alerts_and_the_health() {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, out, n, _) = daemon_on_examples(dir.path()).await;
    let m = daemon.metrics_addr().unwrap();
    let url = format!("http://{m}/");

    let dom = headless(
        url.clone(),
        &dir.path().join("profile"),
        vec!["--dump-dom".into()],
    )
    .await;
    assert!(
        dom.contains("data-loaded=\"1\""),
        "the page's script ran:\n{dom}"
    );
    assert!(
        dom.contains("id=\"status\">updated"),
        "no fetch failed:\n{}",
        row(&dom, "id=\"status\"")
    );
    // The meter: the scenario's two agents in the last hour, the injected
    // one flagged; its sessions against the threshold.
    let injected = row(&dom, "data-agent=\"agent-injected\"");
    assert_eq!(field(injected, "hour"), "6");
    assert_eq!(field(injected, "day"), "9");
    assert!(injected.contains("sustained 4 h"), "{injected}");
    assert!(injected.contains("<svg"), "a sparkline: {injected}");
    assert!(dom.contains("class=\"sustained\""));
    let careful = row(&dom, "data-agent=\"agent-careful\"");
    assert_eq!(field(careful, "hour"), "1");
    assert!(!careful.contains("sustained"), "{careful}");
    let incident = row(&dom, "data-session=\"sess-2\"");
    assert_eq!(field(incident, "total"), "6");
    assert!(incident.contains("aria-label=\"6 of 5\""), "{incident}");
    assert_eq!(field(row(&dom, "data-session=\"sess-1\""), "total"), "3");
    // The alerts: every one raised, each opening to its details.
    let raised = out.alerts();
    // (The script's own template text names `${...}`, not an id.)
    let listed = dom
        .split("<details data-id=\"")
        .skip(1)
        .filter(|rest| !rest.starts_with('$'))
        .count();
    assert_eq!(listed, raised.len());
    for a in &raised {
        let id = a["id"].as_str().unwrap();
        assert!(
            dom.contains(&format!("data-id=\"{id}\"")),
            "alert {id} listed"
        );
    }
    assert!(dom.contains("What to check next"));
    // The health panel: the source's counts and rejections, the sink.
    let source = row(&dom, "data-source=\"audit\"");
    assert_eq!(field(source, "received"), n.to_string());
    assert_eq!(field(source, "decoded"), (n - 2).to_string());
    assert_eq!(field(source, "rejected"), "missing_field 1, not_json 1");
    let sink = row(&dom, "data-sink=\"stdout\"");
    assert_eq!(field(sink, "sent"), raised.len().to_string());
    assert_eq!(field(&dom, "store"), "available");

    // Screenshots for people: the whole page, under target/.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&shots).unwrap();
    screenshot(
        url,
        &dir.path().join("profile-shot"),
        &shots.join("console.png"),
        1500,
    )
    .await;

    // A link to one alert opens it: its summary, key, window, events and
    // what to check next.
    let incident = raised
        .iter()
        .find(|a| a["rule"] == "session_injection_incident" && a["key"]["session_id"] == "sess-2")
        .unwrap();
    let id = incident["id"].as_str().unwrap();
    let linked = format!("http://{m}/#alert={id}");
    let dom = headless(
        linked.clone(),
        &dir.path().join("profile-linked"),
        vec!["--dump-dom".into()],
    )
    .await;
    let opened = &dom[dom.find(&format!("data-id=\"{id}\"")).unwrap()..];
    let opened = &opened[..opened.find("</details>").unwrap()];
    assert!(
        opened.contains(" open=\"\""),
        "the linked alert is open: {opened}"
    );
    // The DOM escapes what the alert says.
    let summary = incident["summary"]
        .as_str()
        .unwrap()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    for text in [
        summary.as_str(),
        "session_id=sess-2",
        "What to check next",
        "read_secrets",
    ] {
        assert!(
            opened.contains(text),
            "`{text}` in the opened alert: {opened}"
        );
    }
    let png = shots.join("console-alert.png");
    screenshot(linked, &dir.path().join("profile-linked-shot"), &png, 2400).await;
    daemon.shutdown().await.unwrap();
}

/// A certificate for `localhost` signed by `ca`, its key and a token file
/// (mode 600) holding `token`, in `dir`: (cert, key, token) paths.
fn tls_files(
    dir: &Path,
    ca: &crate::TestCa,
    token: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let (cert_pem, key_pem) = ca.issue("localhost");
    let paths = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("token"));
    std::fs::write(&paths.0, cert_pem).unwrap();
    std::fs::write(&paths.1, key_pem).unwrap();
    std::fs::write(&paths.2, token).unwrap();
    std::fs::set_permissions(&paths.2, std::fs::Permissions::from_mode(0o600)).unwrap();
    paths
}

/// One HTTPS request (HTTP/1.1, the connection closed after it) to a
/// server whose certificate `ca` signed; the whole response.
async fn https(addr: SocketAddr, ca: &crate::TestCa, request: String) -> String {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut s = connector.connect(name, tcp).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // A TLS peer may close without close_notify: what was read counts.
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn get(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_and_tls_the_page_and_the_api_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::TestCa::new();
    let (cert, key, token) = tls_files(dir.path(), &ca, "s3cret-console-token\n");
    let cfg = format!(
        r#"[metrics]
address = "127.0.0.1:0"
tls = {{ cert_file = "{}", key_file = "{}" }}
[console]
token_file = "{}"
[[sources]]
name = "tcp"
type = "syslog_tcp"
address = "127.0.0.1:0"
"#,
        cert.display(),
        key.display(),
        token.display()
    );
    let (daemon, _out) = start(&cfg, &dir.path().join("state")).await;
    let m = daemon.metrics_addr().unwrap();

    // No token: the API says 401 with a Bearer challenge, the page is the
    // login form; the metrics and health stay open (over TLS).
    let r = https(m, &ca, get("/api/health", "")).await;
    assert_eq!(status(&r), 401, "{r}");
    assert!(
        r.to_ascii_lowercase().contains("www-authenticate: bearer"),
        "{r}"
    );
    let r = https(m, &ca, get("/", "")).await;
    assert_eq!(status(&r), 401, "{r}");
    assert!(body(&r).contains("action=\"/login\""), "{r}");
    let wrong = https(m, &ca, get("/api/alerts", "Authorization: Bearer nope\r\n")).await;
    assert_eq!(status(&wrong), 401, "{wrong}");
    let r = https(m, &ca, get("/metrics", "")).await;
    assert_eq!(status(&r), 200, "{r}");
    assert!(body(&r).contains("mcp_alertd_outbox_pending_deliveries"));
    assert_eq!(status(&https(m, &ca, get("/readyz", "")).await), 200);

    // The token as a bearer.
    let bearer = "Authorization: Bearer s3cret-console-token\r\n";
    let r = https(m, &ca, get("/api/health", bearer)).await;
    assert_eq!(status(&r), 200, "{r}");
    let h: Value = serde_json::from_str(body(&r)).unwrap();
    assert_eq!(h["ready"], true);
    let r = https(m, &ca, get("/", bearer)).await;
    assert_eq!(status(&r), 200);
    assert!(body(&r).contains("Injection meter"));

    // The login form: a wrong token is refused, the right one sets a
    // secure cookie that opens the page and the API.
    let post = |form: &str| {
        format!(
            "POST /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        )
    };
    let r = https(m, &ca, post("token=guess")).await;
    assert_eq!(status(&r), 401, "{r}");
    assert!(body(&r).contains("Wrong token"));
    let r = https(m, &ca, post("token=s3cret-console-token")).await;
    assert_eq!(status(&r), 303, "{r}");
    let cookie = r
        .lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .unwrap_or_else(|| panic!("no cookie set: {r}"));
    for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(attr), "{attr} in {cookie}");
    }
    assert!(
        !cookie.contains("s3cret"),
        "the cookie is not the token: {cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let r = https(
        m,
        &ca,
        get("/api/agents/top", &format!("Cookie: {pair}\r\n")),
    )
    .await;
    assert_eq!(status(&r), 200, "{r}");
    let r = https(
        m,
        &ca,
        get("/api/agents/top", "Cookie: mcp_alertd_console=forged\r\n"),
    )
    .await;
    assert_eq!(status(&r), 401, "{r}");

    // `status` with the configuration speaks TLS to it, the served
    // certificate pinned from cert_file.
    let file = dir.path().join("config.toml");
    std::fs::write(&file, &cfg).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("mcp-alertd"))
            .args(["status", "--interval", "100ms", "--config"])
            .arg(&file)
            .arg("--metrics")
            .arg(m.to_string())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with(&format!("mcp-alertd at {m}: ready")),
        "{text}"
    );
    daemon.shutdown().await.unwrap();
}

#[test]
fn off_loopback_the_console_needs_a_token_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::TestCa::new();
    let (cert, key, token) = tls_files(dir.path(), &ca, "t");
    let tls = format!(
        "tls = {{ cert_file = \"{}\", key_file = \"{}\" }}\n",
        cert.display(),
        key.display()
    );
    let console = format!("[console]\ntoken_file = \"{}\"\n", token.display());
    let parse = |text: String| mcp_alertd::config::Config::parse(&text);
    for (text, ok) in [
        ("[metrics]\naddress = \"0.0.0.0:9464\"\n".to_owned(), false),
        (
            format!("[metrics]\naddress = \"0.0.0.0:9464\"\n{tls}"),
            false,
        ),
        (
            format!("[metrics]\naddress = \"0.0.0.0:9464\"\n{console}"),
            false,
        ),
        (
            format!("[metrics]\naddress = \"0.0.0.0:9464\"\n{tls}{console}"),
            true,
        ),
        (
            "[metrics]\naddress = \"0.0.0.0:9464\"\n[console]\nenabled = false\n".to_owned(),
            true,
        ),
        ("[metrics]\naddress = \"[::1]:9464\"\n".to_owned(), true),
    ] {
        match parse(text.clone()) {
            Ok(_) => assert!(ok, "accepted:\n{text}"),
            Err(errors) => {
                assert!(!ok, "refused:\n{text}\n{errors:?}");
                assert!(
                    errors.iter().any(|e| e.contains("is not loopback")
                        && e.contains("console.token_file")
                        && e.contains("[metrics.tls]")),
                    "{errors:?}"
                );
            }
        }
    }
    // Bad values are named.
    let errors =
        parse("[console]\nmax_agents = 0\ntoken_file = \"a\"\ntoken_credential = \"b\"\n".into())
            .unwrap_err();
    assert!(
        errors.iter().any(|e| e.contains("console.max_agents")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("console.token")),
        "{errors:?}"
    );
}

/// Every metric name a query of the Grafana dashboard names.
fn dashboard_metrics(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                if let (true, Some(text)) =
                    (k == "expr" || k == "query" || k == "definition", v.as_str())
                {
                    let mut rest = text;
                    while let Some(at) = rest.find("mcp_alertd_") {
                        let name: String = rest[at..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        rest = &rest[at + name.len()..];
                        out.push(name);
                    }
                }
                dashboard_metrics(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_metrics(v, out)),
        _ => {}
    }
}

#[test]
fn the_grafana_dashboard_queries_only_metrics_the_daemon_exports() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/grafana/mcp-alertd.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let metrics = mcp_alertd::telemetry::metrics::Metrics::new();
    let exported = metrics.exported();
    let mut named = Vec::new();
    dashboard_metrics(&dash, &mut named);
    assert!(named.len() > 20, "{named:?}");
    for name in &named {
        assert!(
            exported.contains(name),
            "the dashboard queries `{name}`, which the daemon does not export"
        );
    }
    // It shows every metric but the latency's sample count.
    for name in exported {
        assert!(
            named.contains(name) || name.ends_with("latency_samples_total"),
            "`{name}` is on no panel"
        );
    }
    // Panels: unique ids, each with a place, a title and (but rows) a query.
    let panels = dash["panels"].as_array().unwrap();
    let mut ids: Vec<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), panels.len());
    for p in panels {
        assert!(p["gridPos"]["w"].as_u64().unwrap() > 0, "{p}");
        assert!(!p["title"].as_str().unwrap().is_empty());
        if p["type"] != "row" {
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{p}");
            for t in targets {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{p}");
            }
        }
    }
    assert_eq!(dash["uid"], "mcp-alertd");
}

#[test]
fn source_rates_come_from_samples_a_second_or_more_apart() {
    use mcp_alertd::console::health::{Rates, health};
    use mcp_alertd::telemetry::metrics::Metrics;
    let metrics = Metrics::new();
    let received = metrics
        .records_received
        .get_or_create(&Metrics::source("tcp"));
    received.inc_by(100);
    let rates = Rates::default();
    let t0 = std::time::Instant::now();
    let first = health(&metrics, &rates, t0);
    assert_eq!(first.sources[0].received, 100);
    assert_eq!(first.sources[0].rate_per_s, None, "one sample: no rate");
    received.inc_by(50);
    let soon = health(&metrics, &rates, t0 + std::time::Duration::from_millis(200));
    assert_eq!(soon.sources[0].rate_per_s, None, "too close to the first");
    received.inc_by(150);
    let later = health(&metrics, &rates, t0 + std::time::Duration::from_secs(2));
    assert_eq!(later.sources[0].received, 300);
    assert_eq!(later.sources[0].rate_per_s, Some(100.0));
}
