//! The console's routes (`/`, `/login`, `/api/*`), the access check in
//! front of them, and the one HTTP server of the metrics address, plain or
//! TLS.
//!
//! Access: with a token configured (required off loopback), the page and
//! the API take `Authorization: Bearer <token>` or the cookie `/login` sets
//! (a SHA-256 of the token, `HttpOnly`, `SameSite=Strict`, `Secure` over
//! TLS); anything else gets 401 (the page: a login form). `/metrics`,
//! `/healthz` and `/readyz` stay open to scrapers and health checks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::health::{Rates, health};
use super::meter::Window;
use super::{AlertFilter, Console};
use crate::telemetry::metrics::Metrics;

const PAGE: &str = include_str!("page.html");
const LOGIN: &str = include_str!("login.html");
const COOKIE: &str = "mcp_alertd_console";
/// Listed alerts a response holds at most.
const MAX_LIMIT: usize = 500;
/// A TLS handshake must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once; more connections wait in the
/// kernel's backlog.
const MAX_HANDSHAKES: usize = 64;

/// The console's shared state.
#[derive(Clone)]
struct Shared {
    console: Arc<Console>,
    metrics: Arc<Metrics>,
    rates: Arc<Rates>,
    /// The SHA-256 of the token, when one is required.
    token: Option<[u8; 32]>,
    /// The SHA-256 of the login cookie's value (the token's digest in hex).
    cookie: Option<[u8; 32]>,
    tls: bool,
}

fn digest(text: &[u8]) -> [u8; 32] {
    Sha256::digest(text).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Shared {
    /// Whether the request carries the token (or the login cookie).
    fn admitted(&self, headers: &HeaderMap) -> bool {
        let Some(want) = self.token else { return true };
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| digest(t.trim().as_bytes()) == want);
        // Digests are compared, so the comparison's time says nothing
        // about the token.
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
            .any(|v| Some(digest(v.as_bytes())) == self.cookie);
        bearer || cookie
    }
}

/// The console's routes, for the metrics address's server.
pub fn routes(
    console: Arc<Console>,
    metrics: Arc<Metrics>,
    token: Option<&str>,
    tls: bool,
) -> Router {
    let shared = Shared {
        console,
        metrics,
        rates: Arc::new(Rates::default()),
        token: token.map(|t| digest(t.as_bytes())),
        cookie: token.map(|t| digest(hex(&digest(t.as_bytes())).as_bytes())),
        tls,
    };
    let guarded = Router::new()
        .route("/", get(page))
        .route("/api/alerts", get(alerts))
        .route("/api/agents/top", get(top_agents))
        .route("/api/sessions/top", get(top_sessions))
        .route("/api/health", get(api_health))
        .route_layer(middleware::from_fn_with_state(shared.clone(), guard));
    Router::new()
        .merge(guarded)
        .route("/login", post(login))
        .with_state(shared)
}

async fn guard(State(s): State<Shared>, req: Request, next: Next) -> Response {
    if s.admitted(req.headers()) {
        let mut resp = next.run(req).await;
        resp.headers_mut().insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        return resp;
    }
    if req.uri().path().starts_with("/api/") {
        let body = Json(serde_json::json!({
            "error": "a bearer token is required (Authorization: Bearer <token>)"
        }));
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            body,
        )
            .into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        Html(LOGIN.replace("{{error}}", "")),
    )
        .into_response()
}

async fn page() -> impl IntoResponse {
    (
        [(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
        )],
        Html(PAGE),
    )
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(s): State<Shared>, Form(form): Form<LoginForm>) -> Response {
    let Some(want) = s.token else {
        return Redirect::to("/").into_response();
    };
    if digest(form.token.trim().as_bytes()) != want {
        let page = LOGIN.replace("{{error}}", "<p class=\"error\">Wrong token.</p>");
        return (StatusCode::UNAUTHORIZED, Html(page)).into_response();
    }
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{}",
        hex(&want),
        if s.tls { "; Secure" } else { "" }
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

/// A bad query parameter: 400 with a message.
fn bad(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

#[derive(Deserialize)]
struct AlertsQuery {
    since: Option<String>,
    after: Option<u64>,
    rule: Option<String>,
    tenant: Option<String>,
    severity: Option<String>,
    limit: Option<usize>,
}

async fn alerts(State(s): State<Shared>, Query(q): Query<AlertsQuery>) -> Response {
    let since_ms = match q.since.as_deref().filter(|t| !t.is_empty()) {
        None => None,
        Some(text) => match parse_time(text) {
            Some(ms) => Some(ms),
            None => {
                return bad(format!(
                    "since: `{text}` is not an RFC 3339 time or epoch milliseconds"
                ));
            }
        },
    };
    let empty = |v: Option<String>| v.filter(|t| !t.is_empty());
    let filter = AlertFilter {
        since_ms,
        after_seq: q.after,
        rule: empty(q.rule),
        tenant: empty(q.tenant),
        severity: empty(q.severity),
        limit: Some(q.limit.unwrap_or(MAX_LIMIT).min(MAX_LIMIT)),
    };
    let list = s.console.alerts(&filter);
    Json(serde_json::json!({ "alerts": list })).into_response()
}

fn parse_time(text: &str) -> Option<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    text.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

#[derive(Deserialize)]
struct TopQuery {
    window: Option<String>,
}

fn top(s: &Shared, q: TopQuery, sessions: bool) -> Response {
    let window = match q.window.as_deref() {
        None => Window::Hour,
        Some(w) => match Window::parse(w) {
            Some(w) => w,
            None => return bad(format!("window: `{w}` is not `hour` or `day`")),
        },
    };
    let (rows, now, sizes) = s.console.meter(|m| {
        let rows = if sessions {
            m.top_sessions(window)
        } else {
            m.top_agents(window)
        };
        (rows, m.now_ms(), m.sizes())
    });
    let ((agents, sess), (ev_agents, ev_sessions), denials) = sizes;
    let (tracked, evicted) = if sessions {
        (sess, ev_sessions)
    } else {
        (agents, ev_agents)
    };
    Json(serde_json::json!({
        "window": window.name(),
        "now": now.map(crate::alert::format_ts),
        "threshold": sessions.then_some(super::meter::SESSION_THRESHOLD),
        "sustained_hours": super::meter::SUSTAINED_HOURS,
        "tracked": tracked,
        "evicted": evicted,
        "denials": denials,
        "top": rows,
    }))
    .into_response()
}

async fn top_agents(State(s): State<Shared>, Query(q): Query<TopQuery>) -> Response {
    top(&s, q, false)
}

async fn top_sessions(State(s): State<Shared>, Query(q): Query<TopQuery>) -> Response {
    top(&s, q, true)
}

async fn api_health(State(s): State<Shared>) -> Response {
    Json(health(&s.metrics, &s.rates, Instant::now())).into_response()
}

/// A TLS listener for `axum::serve`: connections are accepted and their
/// handshakes run in tasks of their own (at most 64 at
/// once, each within 10 s), so one slow client holds up
/// nobody.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor, cancel: CancellationToken) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
        let (tx, ready) = mpsc::channel(MAX_HANDSHAKES);
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = cancel.cancelled() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("metrics: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "metrics: TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "metrics: TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { ready, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // Stopped: no connection will come; the server's shutdown ends
            // the wait.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Serves `app` on `listener` (TLS when `acceptor` is given) until
/// `cancel`.
pub async fn serve(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    app: Router,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let stop = cancel.clone();
    match acceptor {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }
        Some(acceptor) => {
            let tls = TlsListener::new(listener, acceptor, cancel.clone());
            axum::serve(tls, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }
    }
}
