//! Webhook notifications: delivered after a push and a delete, retried through receiver failures, and never
//! holding up the request even when an endpoint does not answer at all.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{Wharf, push_image};

#[derive(Default)]
struct Receiver {
    calls: usize,
    events: Vec<serde_json::Value>,
    content_types: Vec<String>,
}

/// A webhook receiver that fails its first `fail` calls with 500.
async fn receiver(fail: usize) -> (String, Arc<Mutex<Receiver>>) {
    let state = Arc::new(Mutex::new(Receiver::default()));
    let s = state.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let s = s.clone();
            async move {
                let mut r = s.lock().unwrap();
                r.calls += 1;
                if r.calls <= fail {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                r.content_types.push(ct);
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                r.events.extend(v["events"].as_array().unwrap().iter().cloned());
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, state)
}

#[tokio::test]
async fn push_and_delete_are_notified_with_retries_and_a_dead_endpoint_blocks_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (url, got) = receiver(2).await;
    // An endpoint that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}/hook", silent.local_addr().unwrap());
    let config = tmp.path().join("wharf.toml");
    std::fs::write(
        &config,
        format!(
            "[[notifications.endpoints]]\nname = \"ci\"\nurl = \"{url}\"\nheaders = {{ Authorization = \"Bearer t\" }}\n\n\
             [[notifications.endpoints]]\nname = \"silent\"\nurl = \"{silent_url}\"\ntimeout_secs = 30\n"
        ),
    )
    .unwrap();
    let reg = Wharf::start_with(&tmp.path().join("reg"), &["--config", config.to_str().unwrap()], None);
    let c = common::client();

    let started = Instant::now();
    let img = push_image(&c, &reg, "team/app", "v1", 1, &[4096]).await;
    let status = c
        .delete(reg.url("/v2/team/app/manifests/v1"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "requests waited for the silent endpoint"
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if got.lock().unwrap().events.len() >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "events not delivered: {}",
            got.lock().unwrap().events.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = got.lock().unwrap();
    assert_eq!(r.calls, 4, "two failures, then one delivery per event");
    assert!(
        r.content_types
            .iter()
            .all(|c| c == "application/vnd.docker.distribution.events.v1+json")
    );
    let push = &r.events[0];
    assert_eq!(push["action"], "push");
    assert_eq!(push["target"]["repository"], "team/app");
    assert_eq!(push["target"]["tag"], "v1");
    assert_eq!(push["target"]["digest"], img.digest.as_str());
    assert_eq!(push["target"]["size"], img.manifest.len());
    assert!(push["timestamp"].as_str().unwrap().ends_with('Z'));
    let delete = &r.events[1];
    assert_eq!(delete["action"], "delete");
    assert_eq!(delete["target"]["tag"], "v1");
    assert_ne!(push["id"], delete["id"]);
}
