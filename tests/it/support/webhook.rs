//! A webhook receiver on loopback for delivery tests: it records what it
//! accepted and answers the statuses a test scripts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

/// Requests the test webhook accepted: headers and body.
pub type Received = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

/// What the test webhook received, and how it answers.
#[derive(Clone, Default)]
pub struct Hook {
    pub got: Received,
    /// Statuses to answer, in order; 200 once they run out.
    pub script: Arc<Mutex<Vec<u16>>>,
    pub calls: Arc<AtomicUsize>,
    pub arrivals: Arc<Mutex<Vec<std::time::Instant>>>,
}

impl Hook {
    pub fn ids(&self) -> Vec<String> {
        let alerts: Vec<Value> = self
            .got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| serde_json::from_slice(b).unwrap())
            .collect();
        crate::support::sorted_ids(&alerts)
    }
}

pub async fn webhook_server(hook: Hook, listener: tokio::net::TcpListener) {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let hook = hook.clone();
            async move {
                hook.calls.fetch_add(1, Ordering::SeqCst);
                hook.arrivals
                    .lock()
                    .unwrap()
                    .push(std::time::Instant::now());
                let status = {
                    let mut s = hook.script.lock().unwrap();
                    if s.is_empty() { 200 } else { s.remove(0) }
                };
                if status == 200 {
                    hook.got.lock().unwrap().push((headers, body.to_vec()));
                }
                StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    axum::serve(listener, app).await.unwrap();
}
