//! SIEM sinks against receivers that implement the documented protocols:
//! a Splunk HTTP Event Collector (token, channels, gzip, indexer
//! acknowledgement, the HEC status codes, `invalid-event-number`), an
//! Elasticsearch `_bulk` endpoint (create actions, per-item statuses, 409
//! for an id it already holds, API key and basic auth), and templated
//! webhooks (PagerDuty, Slack) and a syslog MSG in a chosen format. Waits
//! are bounded polls; nothing asserts on timing.

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use crate::support::{metric, replay_ids, scenario, scrape_blocking, send_tcp, start, wait_for};

/// A JSON response body (the daemon's axum has no `json` feature).
#[allow(non_snake_case)]
fn J(v: Value) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
}

/// Alerts of `scenario`: one burst, six unauthorized tools, one incident.
const ALERTS: usize = 8;

fn secret_file(dir: &Path, name: &str, value: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, format!("{value}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.display().to_string()
}

fn config(sinks: &str) -> String {
    format!(
        r#"[engine]
idle_after = "1h"
[metrics]
address = "127.0.0.1:0"
[outbox]
retry_initial = "20ms"
retry_max = "100ms"
[[sources]]
name = "tcp"
type = "syslog_tcp"
address = "127.0.0.1:0"
{sinks}"#
    )
}

fn sent(m: std::net::SocketAddr, sink: &str) -> (f64, f64, f64) {
    let t = scrape_blocking(m);
    (
        metric(
            &t,
            &format!("mcp_alertd_alerts_sent_total{{sink=\"{sink}\"}}"),
        ),
        metric(
            &t,
            &format!("mcp_alertd_alerts_dead_total{{sink=\"{sink}\"}}"),
        ),
        metric(
            &t,
            &format!("mcp_alertd_alert_send_errors_total{{sink=\"{sink}\"}}"),
        ),
    )
}

// ---------------------------------------------------------------- HEC

/// A Splunk HTTP Event Collector as its documentation describes it.
#[derive(Clone, Default)]
struct Hec {
    token: String,
    /// Indexer acknowledgement enabled on the token: requests need a channel.
    ack: bool,
    /// Responses to give before behaving normally: (HTTP status, body).
    script: Arc<Mutex<Vec<(u16, Value)>>>,
    /// Events indexed, in order.
    events: Arc<Mutex<Vec<Value>>>,
    /// Headers of every event request.
    requests: Arc<Mutex<Vec<HeaderMap>>>,
    next_ack: Arc<AtomicU64>,
    /// Ack ids issued, with how many times each was polled.
    polls: Arc<Mutex<HashMap<u64, u32>>>,
    channel: Arc<Mutex<Option<String>>>,
}

/// An HEC error: HTTP status, HEC code, text.
type HecError = (u16, i64, &'static str);

fn hec_reply(status: u16, code: i64, text: &str) -> axum::response::Response {
    (
        StatusCode::from_u16(status).unwrap(),
        J(json!({"text": text, "code": code})),
    )
        .into_response()
}

impl Hec {
    /// The HEC error (HTTP status, code, text) of a request's token, if any.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), HecError> {
        match headers.get("authorization").and_then(|v| v.to_str().ok()) {
            None => Err((401, 2, "Token is required")),
            Some(a) if !a.starts_with("Splunk ") => Err((401, 3, "Invalid authorization")),
            Some(a) if a["Splunk ".len()..] != self.token => Err((403, 4, "Invalid token")),
            Some(_) => Ok(()),
        }
    }

    fn channel(&self, headers: &HeaderMap) -> Result<Option<String>, HecError> {
        let ch = headers
            .get("x-splunk-request-channel")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if self.ack && ch.is_none() {
            return Err((400, 10, "Data channel is missing"));
        }
        Ok(ch)
    }

    fn body(headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
        if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .unwrap();
            out
        } else {
            body.to_vec()
        }
    }
}

async fn hec_event(
    State(hec): State<Hec>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    hec.requests.lock().unwrap().push(headers.clone());
    if let Err((s, c, t)) = hec.authorize(&headers) {
        return hec_reply(s, c, t);
    }
    let channel = match hec.channel(&headers) {
        Ok(c) => c,
        Err((s, c, t)) => return hec_reply(s, c, t),
    };
    let raw = Hec::body(&headers, &body);
    let events: Vec<Value> = match serde_json::Deserializer::from_slice(&raw)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
    {
        Ok(e) => e,
        Err(_) => return hec_reply(400, 6, "Invalid data format"),
    };
    if events.is_empty() {
        return hec_reply(400, 5, "No data");
    }
    if let Some(i) = events.iter().position(|e| e.get("event").is_none()) {
        return (
            StatusCode::BAD_REQUEST,
            J(json!({"text": "Event field is required", "code": 12, "invalid-event-number": i})),
        )
            .into_response();
    }
    let scripted = {
        let mut s = hec.script.lock().unwrap();
        if s.is_empty() {
            None
        } else {
            Some(s.remove(0))
        }
    };
    if let Some((status, reply)) = scripted {
        // Events before an invalid one are indexed, as HEC does.
        if let Some(n) = reply["invalid-event-number"].as_u64() {
            hec.events
                .lock()
                .unwrap()
                .extend(events.into_iter().take(n as usize));
        }
        return (StatusCode::from_u16(status).unwrap(), J(reply)).into_response();
    }
    hec.events.lock().unwrap().extend(events);
    match channel {
        Some(ch) => {
            *hec.channel.lock().unwrap() = Some(ch);
            let id = hec.next_ack.fetch_add(1, Ordering::SeqCst);
            hec.polls.lock().unwrap().insert(id, 0);
            J(json!({"text": "Success", "code": 0, "ackId": id})).into_response()
        }
        None => J(json!({"text": "Success", "code": 0})).into_response(),
    }
}

async fn hec_ack(
    State(hec): State<Hec>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    if let Err((s, c, t)) = hec.authorize(&headers) {
        return hec_reply(s, c, t);
    }
    if !hec.ack {
        return hec_reply(400, 14, "ACK is disabled");
    }
    let q: BTreeMap<String, String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let Some(ch) = q.get("channel") else {
        return hec_reply(400, 10, "Data channel is missing");
    };
    if Some(ch) != hec.channel.lock().unwrap().as_ref() {
        return hec_reply(400, 11, "Invalid data channel");
    }
    let req: Value = serde_json::from_slice(&Hec::body(&headers, &body)).unwrap();
    let mut acks = serde_json::Map::new();
    let mut polls = hec.polls.lock().unwrap();
    for id in req["acks"].as_array().unwrap() {
        let id = id.as_u64().unwrap();
        // Indexed from the second poll on: the sink must wait for it.
        let done = polls.get_mut(&id).map(|n| {
            *n += 1;
            *n > 1
        });
        acks.insert(id.to_string(), done.unwrap_or(false).into());
    }
    J(json!({ "acks": acks })).into_response()
}

async fn serve_hec(hec: Hec) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/services/collector/event", axum::routing::post(hec_event))
        .route("/services/collector/ack", axum::routing::post(hec_ack))
        .with_state(hec);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn hec_ids(hec: &Hec) -> Vec<String> {
    let mut ids: Vec<String> = hec
        .events
        .lock()
        .unwrap()
        .iter()
        .map(|e| e["fields"]["alert_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_hec_gets_gzip_batches_with_the_token_and_waits_for_indexer_acks() {
    let dir = tempfile::tempdir().unwrap();
    let hec = Hec {
        token: "11111111-2222-3333-4444-555555555555".into(),
        ack: true,
        ..Hec::default()
    };
    // The first request finds the server busy (retried), as do later ones
    // with an unhealthy queue (code 18).
    *hec.script.lock().unwrap() = vec![
        (503, json!({"text": "Server is busy", "code": 9})),
        (
            503,
            json!({"text": "HEC is unhealthy, queues are full", "code": 18}),
        ),
    ];
    let url = serve_hec(hec.clone()).await;
    let token = secret_file(dir.path(), "hec.token", &hec.token);
    let cfg = config(&format!(
        r#"[[sinks]]
name = "splunk"
type = "splunk_hec"
url = "{url}"
token_file = "{token}"
index = "security"
sourcetype = "mcp:alert"
host = "gw-1"
gzip = true
ack = true
ack_interval = "20ms"
batch_size = 3
format = "ocsf"
"#
    ));
    let (daemon, _out) = start(&cfg, dir.path()).await;
    let lines = scenario("hec");
    send_tcp(daemon.local_addr("tcp").unwrap(), &lines).await;
    let m = daemon.metrics_addr().unwrap();
    wait_for("every alert acknowledged", || {
        sent(m, "splunk").0 == ALERTS as f64
    })
    .await;
    let (_, dead, errors) = sent(m, "splunk");
    daemon.shutdown().await.unwrap();
    assert_eq!(dead, 0.0);
    assert!(errors >= 2.0, "the busy replies count as failed attempts");
    assert_eq!(
        hec_ids(&hec),
        replay_ids(&lines),
        "each alert indexed exactly once"
    );
    for req in hec.requests.lock().unwrap().iter() {
        assert_eq!(req["content-encoding"], "gzip");
        assert_eq!(req["authorization"], format!("Splunk {}", hec.token));
        assert!(req.contains_key("x-splunk-request-channel"));
    }
    let requests = hec.requests.lock().unwrap().len();
    assert!(requests <= ALERTS + 2, "batched: {requests} requests");
    for e in hec.events.lock().unwrap().iter() {
        assert_eq!(e["index"], "security");
        assert_eq!(e["sourcetype"], "mcp:alert");
        assert_eq!(e["host"], "gw-1");
        assert_eq!(e["source"], "mcp-alertd");
        assert_eq!(e["event"]["class_uid"], 2004);
        assert_eq!(e["event"]["finding_info"]["uid"], e["fields"]["alert_id"]);
        let time = e["time"].as_f64().unwrap();
        assert_eq!(
            (time * 1000.0).round() as i64,
            e["event"]["time"].as_i64().unwrap()
        );
    }
    // Every ack was polled until it was indexed.
    assert!(hec.polls.lock().unwrap().values().all(|n| *n >= 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_hec_invalid_event_is_a_dead_letter_and_the_rest_of_its_batch_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let hec = Hec {
        token: "tok".into(),
        ..Hec::default()
    };
    *hec.script.lock().unwrap() = vec![(
        400,
        json!({"text": "Invalid data format", "code": 6, "invalid-event-number": 0}),
    )];
    let url = serve_hec(hec.clone()).await;
    let token = secret_file(dir.path(), "hec.token", "tok");
    let cfg = config(&format!(
        "[[sinks]]\nname = \"splunk\"\ntype = \"splunk_hec\"\nurl = \"{url}\"\ntoken_file = \"{token}\"\nbatch_size = 8\n"
    ));
    let (daemon, _out) = start(&cfg, dir.path()).await;
    let lines = scenario("hecbad");
    send_tcp(daemon.local_addr("tcp").unwrap(), &lines).await;
    let m = daemon.metrics_addr().unwrap();
    wait_for("all but one delivered, one dead", || {
        let (s, d, _) = sent(m, "splunk");
        s == (ALERTS - 1) as f64 && d == 1.0
    })
    .await;
    daemon.shutdown().await.unwrap();
    let got = hec_ids(&hec);
    assert_eq!(got.len(), ALERTS - 1, "no duplicates");
    let all = replay_ids(&lines);
    assert!(got.iter().all(|id| all.contains(id)));
    // The native alert is the event.
    for e in hec.events.lock().unwrap().iter() {
        assert_eq!(e["event"]["id"], e["fields"]["alert_id"]);
        assert!(e.get("index").is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_hec_rejecting_the_token_makes_dead_letters_without_retries() {
    let dir = tempfile::tempdir().unwrap();
    let hec = Hec {
        token: "right".into(),
        ..Hec::default()
    };
    let url = serve_hec(hec.clone()).await;
    let token = secret_file(dir.path(), "hec.token", "wrong");
    let cfg = config(&format!(
        "[[sinks]]\nname = \"splunk\"\ntype = \"splunk_hec\"\nurl = \"{url}\"\ntoken_file = \"{token}\"\n"
    ));
    let (daemon, _out) = start(&cfg, dir.path()).await;
    send_tcp(daemon.local_addr("tcp").unwrap(), &scenario("hectok")).await;
    let m = daemon.metrics_addr().unwrap();
    wait_for("every alert a dead letter", || {
        sent(m, "splunk").1 == ALERTS as f64
    })
    .await;
    let (s, _, errors) = sent(m, "splunk");
    daemon.shutdown().await.unwrap();
    assert_eq!(s, 0.0);
    assert_eq!(
        errors, ALERTS as f64,
        "one attempt each: HEC code 4 is permanent"
    );
    assert!(hec.events.lock().unwrap().is_empty());
    let text = crate::support::outbox_list(dir.path());
    assert!(
        text.contains("Invalid token") && !text.contains("wrong"),
        "{text}"
    );
}

// ------------------------------------------------------- Elasticsearch

#[derive(Clone, Default)]
struct Es {
    /// The `Authorization` header every request must carry.
    auth: String,
    /// Documents by (index, id).
    docs: Arc<Mutex<BTreeMap<(String, String), Value>>>,
    /// Every action line received.
    actions: Arc<Mutex<Vec<Value>>>,
    requests: Arc<AtomicUsize>,
    /// Rules whose documents fail mapping (400), always.
    reject_rule: String,
    /// Rules whose first document is refused with 429 once.
    busy_rule: Arc<Mutex<Option<String>>>,
}

async fn es_bulk(
    State(es): State<Es>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let n = es.requests.fetch_add(1, Ordering::SeqCst);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(es.auth.as_str()) {
        return (StatusCode::UNAUTHORIZED, J(json!({"error": {"type": "security_exception", "reason": "missing authentication credentials"}, "status": 401}))).into_response();
    }
    assert_eq!(headers["content-type"], "application/x-ndjson");
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.ends_with('\n'), "NDJSON ends with a newline");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut items = Vec::new();
    let mut errors = false;
    for pair in lines.chunks(2) {
        let (action, doc) = (&pair[0], &pair[1]);
        es.actions.lock().unwrap().push(action.clone());
        let create = &action["create"];
        let key = (
            create["_index"].as_str().unwrap().to_owned(),
            create["_id"].as_str().unwrap().to_owned(),
        );
        let rule = doc["rule"]["id"].as_str().unwrap_or("");
        let busy = {
            let mut b = es.busy_rule.lock().unwrap();
            if b.as_deref() == Some(rule) {
                b.take().is_some()
            } else {
                false
            }
        };
        let (status, error) = if !es.reject_rule.is_empty() && rule == es.reject_rule {
            (
                400,
                Some(
                    json!({"type": "document_parsing_exception", "reason": "failed to parse field [event.severity] of type [long]"}),
                ),
            )
        } else if busy {
            (
                429,
                Some(
                    json!({"type": "es_rejected_execution_exception", "reason": "rejected execution of coordinating operation"}),
                ),
            )
        } else if es.docs.lock().unwrap().contains_key(&key) {
            (
                409,
                Some(
                    json!({"type": "version_conflict_engine_exception", "reason": format!("[{}]: version conflict, document already exists", key.1)}),
                ),
            )
        } else {
            es.docs.lock().unwrap().insert(key.clone(), doc.clone());
            (201, None)
        };
        errors |= error.is_some();
        let mut item = json!({"_index": key.0, "_id": key.1, "status": status});
        if let Some(e) = error {
            item["error"] = e;
        }
        items.push(json!({ "create": item }));
    }
    if n == 0 {
        // The first reply is lost: everything it indexed will come again.
        return (StatusCode::SERVICE_UNAVAILABLE, "upstream connect error").into_response();
    }
    J(json!({"took": 3, "errors": errors, "items": items})).into_response()
}

async fn serve_es(es: Es) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/_bulk", axum::routing::post(es_bulk))
        .with_state(es);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_bulk_creates_each_alert_once_and_judges_every_item() {
    let dir = tempfile::tempdir().unwrap();
    let es = Es {
        auth: "ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==".into(),
        reject_rule: "auth_failure_burst".into(),
        busy_rule: Arc::new(Mutex::new(Some("session_injection_incident".into()))),
        ..Es::default()
    };
    let url = serve_es(es.clone()).await;
    let key = secret_file(dir.path(), "es.key", es.auth.trim_start_matches("ApiKey "));
    let cfg = config(&format!(
        "[[sinks]]\nname = \"elastic\"\ntype = \"elasticsearch\"\nurl = \"{url}\"\napi_key_file = \"{key}\"\nindex = \"mcp-%Y.%m\"\nbatch_size = 4\n"
    ));
    let (daemon, _out) = start(&cfg, dir.path()).await;
    let lines = scenario("es");
    send_tcp(daemon.local_addr("tcp").unwrap(), &lines).await;
    let m = daemon.metrics_addr().unwrap();
    wait_for("all but the rejected delivered", || {
        let (s, d, _) = sent(m, "elastic");
        s == (ALERTS - 1) as f64 && d == 1.0
    })
    .await;
    daemon.shutdown().await.unwrap();
    let docs = es.docs.lock().unwrap().clone();
    assert_eq!(
        docs.len(),
        ALERTS - 1,
        "a resent batch makes no second document"
    );
    for ((index, id), doc) in &docs {
        assert_eq!(doc["event"]["id"], *id, "the alert id is the _id");
        assert_eq!(doc["event"]["kind"], "alert", "ECS by default");
        let ts = doc["@timestamp"].as_str().unwrap();
        assert_eq!(*index, format!("mcp-{}.{}", &ts[0..4], &ts[5..7]));
        assert_ne!(doc["rule"]["id"], "auth_failure_burst");
    }
    let actions = es.actions.lock().unwrap().clone();
    assert!(
        actions.iter().all(|a| a.get("create").is_some()),
        "create actions only"
    );
    assert!(
        actions.len() > ALERTS,
        "the lost reply made the sink send again"
    );
    // The rejected document is a dead letter with the item's error.
    let text = crate::support::outbox_list(dir.path());
    assert!(text.contains("document_parsing_exception"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_basic_auth_is_sent_and_a_refused_login_is_permanent() {
    let dir = tempfile::tempdir().unwrap();
    use base64::Engine as _;
    let es = Es {
        auth: format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("mcp:right")
        ),
        ..Es::default()
    };
    let url = serve_es(es.clone()).await;
    let good = secret_file(dir.path(), "good.pw", "right");
    let bad = secret_file(dir.path(), "bad.pw", "wrong");
    let cfg = config(&format!(
        "[[sinks]]\nname = \"good\"\ntype = \"elasticsearch\"\nurl = \"{url}\"\nusername = \"mcp\"\npassword_file = \"{good}\"\nformat = \"ocsf\"\n\
         [[sinks]]\nname = \"bad\"\ntype = \"elasticsearch\"\nurl = \"{url}\"\nusername = \"mcp\"\npassword_file = \"{bad}\"\n"
    ));
    let (daemon, _out) = start(&cfg, dir.path()).await;
    let lines = scenario("esauth");
    send_tcp(daemon.local_addr("tcp").unwrap(), &lines).await;
    let m = daemon.metrics_addr().unwrap();
    wait_for("good delivered, bad dead", || {
        sent(m, "good").0 == ALERTS as f64 && sent(m, "bad").1 == ALERTS as f64
    })
    .await;
    daemon.shutdown().await.unwrap();
    let docs = es.docs.lock().unwrap().clone();
    let mut ids: Vec<String> = docs.keys().map(|(_, id)| id.clone()).collect();
    ids.sort();
    assert_eq!(ids, replay_ids(&lines));
    assert!(
        docs.values().all(|d| d["class_uid"] == 2004),
        "the chosen format"
    );
}

// ------------------------------------------------------------ templates

#[derive(Clone, Default)]
struct Hook {
    got: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
}

async fn serve_hook(hook: Hook) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v2/enqueue", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/v2/enqueue",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let hook = hook.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).unwrap();
                hook.got.lock().unwrap().push((headers, v));
                (
                    StatusCode::ACCEPTED,
                    J(json!({"status": "success", "message": "Event processed"})),
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_and_slack_presets_send_what_those_services_take() {
    let dir = tempfile::tempdir().unwrap();
    let (pd, slack) = (Hook::default(), Hook::default());
    let pd_url = serve_hook(pd.clone()).await;
    let slack_url = serve_hook(slack.clone()).await;
    let routing = secret_file(dir.path(), "pd.key", "R0UT1NGKEY0000000000000000000000");
    let cfg = config(&format!(
        r#"[[sinks]]
name = "pagerduty"
type = "webhook"
url = "{pd_url}"
template = "pagerduty"
template_secret_file = "{routing}"
template_vars = {{ source = "mcp-gw-1" }}
[[sinks]]
name = "slack"
type = "webhook"
url = "{slack_url}"
template = "slack"
"#
    ));
    let (daemon, _out) = start(&cfg, dir.path()).await;
    let lines = scenario("pd");
    send_tcp(daemon.local_addr("tcp").unwrap(), &lines).await;
    wait_for("both received every alert", || {
        pd.got.lock().unwrap().len() == ALERTS && slack.got.lock().unwrap().len() == ALERTS
    })
    .await;
    daemon.shutdown().await.unwrap();
    let mut ids = Vec::new();
    for (headers, body) in pd.got.lock().unwrap().iter() {
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(body["routing_key"], "R0UT1NGKEY0000000000000000000000");
        assert_eq!(body["event_action"], "trigger");
        assert_eq!(body["dedup_key"], headers["webhook-id"].to_str().unwrap());
        assert_eq!(body["payload"]["source"], "mcp-gw-1");
        let want = match body["payload"]["class"].as_str().unwrap() {
            "session_injection_incident" => "critical",
            "auth_failure_burst" | "unauthorized_tool_attempt" => "error",
            other => panic!("{other}"),
        };
        assert_eq!(body["payload"]["severity"], want);
        assert!(body["payload"]["summary"].as_str().unwrap().len() <= 1024);
        ids.push(body["dedup_key"].as_str().unwrap().to_owned());
    }
    ids.sort();
    assert_eq!(ids, replay_ids(&lines));
    for (_, body) in slack.got.lock().unwrap().iter() {
        assert_eq!(body["blocks"][0]["type"], "header");
        assert!(body["text"].as_str().unwrap().contains("(pd)"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syslog_siem_gets_leef_in_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, _) = udp.recv_from(&mut buf).await.unwrap();
            g.lock()
                .unwrap()
                .push(String::from_utf8(buf[..n].to_vec()).unwrap());
        }
    });
    let cfg = config(&format!(
        "[[sinks]]\nname = \"qradar\"\ntype = \"syslog\"\nprotocol = \"udp\"\naddress = \"{addr}\"\nformat = \"leef\"\nleef_delimiter = \"x09\"\n"
    ));
    let (daemon, _out) = start(&cfg, dir.path()).await;
    send_tcp(daemon.local_addr("tcp").unwrap(), &scenario("leef")).await;
    wait_for("every alert", || got.lock().unwrap().len() == ALERTS).await;
    daemon.shutdown().await.unwrap();
    for msg in got.lock().unwrap().iter() {
        let leef = &msg[msg.find("LEEF:2.0|").expect(msg)..];
        let fields: Vec<&str> = leef.splitn(7, '|').collect();
        assert_eq!(fields[5], "x09");
        assert!(
            fields[6].split('\t').any(|kv| kv == "tenant=leef"),
            "{leef}"
        );
    }
}

// --------------------------------------------------------------- check

#[test]
fn check_refuses_every_bad_format_template_and_siem_setting_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let undefined = dir.path().join("undefined.json");
    std::fs::write(&undefined, r#"{"text": {{ alert.sumary }}}"#).unwrap();
    let not_json = dir.path().join("broken.json");
    std::fs::write(&not_json, r#"{"text": {{ alert.summary }} "#).unwrap();
    let syntax = dir.path().join("syntax.txt");
    std::fs::write(&syntax, "{% if %}").unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[sinks]]
name = "a"
type = "webhook"
url = "http://127.0.0.1:9/a"
template_file = "{}"
[[sinks]]
name = "b"
type = "webhook"
url = "http://127.0.0.1:9/b"
template_file = "{}"
[[sinks]]
name = "c"
type = "webhook"
url = "http://127.0.0.1:9/c"
template = "pagerduty"
[[sinks]]
name = "d"
type = "webhook"
url = "http://127.0.0.1:9/d"
template = "opsgenie"
[[sinks]]
name = "e"
type = "webhook"
url = "http://127.0.0.1:9/e"
template_file = "{}"
[[sinks]]
name = "f"
type = "file"
path = "/tmp/x"
format = "leef"
leef_delimiter = "=="
[[sinks]]
name = "g"
type = "elasticsearch"
url = "http://127.0.0.1:9"
format = "cef"
index = "Alerts-%Y"
[[sinks]]
name = "h"
type = "splunk_hec"
url = "http://127.0.0.1:9"
ack = true
channel = "not-a-guid"
batch_size = 0
[[sinks]]
name = "i"
type = "email"
host = "127.0.0.1"
tls = "none"
from = "a@example.com"
to = ["b@example.com"]
format = "ocsf"
[[sinks]]
name = "j"
type = "webhook"
url = "http://127.0.0.1:9/j"
template = "slack"
format = "ecs"
[[sinks]]
name = "k"
type = "kafka"
topic = "alerts"
kafka = {{ brokers = "127.0.0.1:9" }}
format = "yaml"
"#,
            undefined.display(),
            not_json.display(),
            syntax.display()
        ),
    )
    .unwrap();
    let out = assert_cmd::Command::cargo_bin("mcp-alertd")
        .unwrap()
        .args(["check", "--config"])
        .arg(&config)
        .assert()
        .code(78)
        .get_output()
        .stderr
        .clone();
    let text = String::from_utf8(out).unwrap();
    for want in [
        "sinks (a): template undefined.json: undefined value",
        "sinks (b): template broken.json: the output is not JSON",
        "sinks (c): template pagerduty.json: undefined value",
        "unknown template `opsgenie` (slack, teams, pagerduty)",
        "sinks (e): template syntax.txt: syntax error",
        "leef_delimiter `==`",
        "Elasticsearch documents are JSON",
        "index name `Alerts-2026` has upper-case letters",
        "`channel` `not-a-guid` is not a GUID",
        "`batch_size` must be 1..=10000",
        "`token_file` or `token_credential` is required for type `splunk_hec`",
        "sinks (i): email writes its own body",
        "sinks (j): a template renders the alert itself",
        "unknown format `yaml` (native, ocsf, ecs, cef, leef)",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}

#[test]
fn check_lists_each_sinks_format_or_template() {
    let dir = tempfile::tempdir().unwrap();
    let token = secret_file(dir.path(), "hec.token", "t");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[sinks]]
name = "siem"
type = "syslog"
address = "127.0.0.1:514"
[[sinks]]
name = "splunk"
type = "splunk_hec"
url = "https://127.0.0.1:8088"
token_file = "{token}"
format = "ocsf"
[[sinks]]
name = "elastic"
type = "elasticsearch"
url = "https://127.0.0.1:9200"
[[sinks]]
name = "teams"
type = "webhook"
url = "https://127.0.0.1/teams"
template = "teams"
"#
        ),
    )
    .unwrap();
    let out = assert_cmd::Command::cargo_bin("mcp-alertd")
        .unwrap()
        .args(["check", "--config"])
        .arg(&config)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    for want in [
        "sink   siem                 syslog        format cef",
        "sink   splunk               splunk_hec    format ocsf",
        "sink   elastic              elasticsearch format ecs",
        "sink   teams                webhook       template teams",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
}
