//! Webhook notifications on push and delete, in CNCF distribution's envelope
//! (`application/vnd.docker.distribution.events.v1+json`, `{"events": [...]}`), so receivers written for
//! distribution (Harbor's, scanners, CI triggers) work unchanged.
//!
//! A request never waits for a webhook: [`Notifier::emit`] puts the event in a bounded queue and returns; one task
//! per endpoint delivers in order, retrying a failed delivery (connection error, timeout, non-2xx) with exponential
//! backoff (0.5 s doubling to 30 s) up to `attempts` times, then drops it with a warning and a metric. A full queue
//! (an endpoint down for long) drops the newest events, counted in `wharf_notifications_dropped_total`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;

/// Events waiting per endpoint before new ones are dropped.
const QUEUE: usize = 4096;
const MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub url: String,
    /// Extra headers (e.g. `Authorization`).
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    /// Deliveries tried before an event is dropped.
    pub attempts: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: String,
    pub timestamp: String,
    pub action: &'static str,
    pub target: Target,
    pub source: Source,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub digest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    pub repository: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    #[serde(rename = "instanceID")]
    pub instance_id: String,
}

pub struct Notifier {
    queues: Vec<(String, mpsc::Sender<Event>)>,
    instance: String,
}

impl Notifier {
    /// Starts one delivery task per endpoint (on the current tokio runtime).
    pub fn start(endpoints: Vec<Endpoint>) -> Arc<Notifier> {
        let mut queues = Vec::new();
        for ep in endpoints {
            let (tx, rx) = mpsc::channel(QUEUE);
            queues.push((ep.name.clone(), tx));
            tokio::spawn(deliver(ep, rx));
        }
        Arc::new(Notifier {
            queues,
            instance: uuid::Uuid::new_v4().to_string(),
        })
    }

    /// Queues an event for every endpoint; never waits.
    pub fn emit(&self, action: &'static str, target: Target) {
        let event = Event {
            id: uuid::Uuid::new_v4().to_string(),
            timestamp: crate::rfc3339::millis(SystemTime::now()),
            action,
            target,
            source: Source {
                instance_id: self.instance.clone(),
            },
        };
        for (name, q) in &self.queues {
            if q.try_send(event.clone()).is_err() {
                metrics::counter!("wharf_notifications_dropped_total", "endpoint" => name.clone()).increment(1);
                tracing::warn!(endpoint = %name, action, "notification queue full; event dropped");
            }
        }
    }
}

async fn deliver(ep: Endpoint, mut rx: mpsc::Receiver<Event>) {
    let client = match wharf_remote::http::client_builder().timeout(ep.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(endpoint = %ep.name, error = %e, "cannot build the notification client");
            return;
        }
    };
    while let Some(event) = rx.recv().await {
        let body = match serde_json::to_vec(&serde_json::json!({ "events": [&event] })) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a notification");
                continue;
            }
        };
        let mut backoff = Duration::from_millis(500);
        for attempt in 1..=ep.attempts.max(1) {
            let mut req = client
                .post(&ep.url)
                .header(reqwest::header::CONTENT_TYPE, MEDIA_TYPE)
                .body(body.clone());
            for (k, v) in &ep.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            let outcome = match req.send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("HTTP {}", r.status())),
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(()) => {
                    metrics::counter!("wharf_notifications_sent_total", "endpoint" => ep.name.clone()).increment(1);
                    break;
                }
                Err(e) if attempt < ep.attempts => {
                    tracing::debug!(endpoint = %ep.name, error = %e, attempt, "notification failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(e) => {
                    metrics::counter!("wharf_notifications_failed_total", "endpoint" => ep.name.clone()).increment(1);
                    tracing::warn!(endpoint = %ep.name, error = %e, id = %event.id, "notification dropped after retries");
                }
            }
        }
    }
}
