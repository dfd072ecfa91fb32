//! `wharf inspect | tags | digest | catalog | delete` against a real `wharf serve`.

mod common;

use std::process::Command;

use common::{Wharf, client, push_image};

fn wharf(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(args)
        .env("DOCKER_CONFIG", "/nonexistent")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everyday_questions_and_a_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Wharf::start(&tmp.path().join("reg"));
    let c = client();
    let img = push_image(&c, &reg, "team/app", "v1", 3, &[1000, 2000]).await;
    // More tags than one page of a list (1,000): the listing follows the registry's Link header.
    for i in 0..1004 {
        let r = c
            .put(reg.url(&format!("/v2/team/app/manifests/t{i:04}")))
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .body(img.manifest.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let name = format!("{}/team/app:v1", reg.addr);

    let (ok, out, err) = wharf(&["inspect", &name]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Name"], format!("{}/team/app", reg.addr));
    assert_eq!(v["Digest"], img.digest.as_str());
    assert_eq!(v["Architecture"], "amd64");
    assert_eq!(v["Os"], "linux");
    assert_eq!(v["RepoTags"].as_array().unwrap().len(), 1005);
    let layers: Vec<&str> = v["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(layers, [img.blobs[1].0.as_str(), img.blobs[2].0.as_str()]);
    assert_eq!(v["LayersData"][1]["Size"], 2000);
    let (ok, out, _) = wharf(&["inspect", "--raw", &name]);
    assert!(ok && out.as_bytes() == &img.manifest[..]);
    let (ok, out, _) = wharf(&["inspect", "--config", &name]);
    assert!(ok && out.as_bytes() == &img.blobs[0].1[..]);

    let (ok, out, err) = wharf(&["tags", &name]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 1005);
    assert!(out.lines().any(|t| t == "t1003") && out.lines().any(|t| t == "v1"));
    let (ok, out, _) = wharf(&["digest", &name]);
    assert!(ok);
    assert_eq!(out.trim(), img.digest);
    let (ok, out, _) = wharf(&["catalog", "--json", &reg.addr]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["team/app"]));

    let (ok, out, err) = wharf(&["delete", "--yes", &name]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("deleted {}/team/app@{}", reg.addr, img.digest));
    let (ok, _, err) = wharf(&["digest", &name]);
    assert!(!ok);
    assert!(err.contains("HTTP 404") && err.trim().lines().count() == 1, "{err}");
    let (ok, _, err) = wharf(&["inspect", &format!("{}/no/such:v1", reg.addr)]);
    assert!(!ok && err.contains("404") && err.trim().lines().count() == 1, "{err}");
}

/// Credentials from podman's `auth.json`: the file `--authfile` names, or `$REGISTRY_AUTH_FILE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_come_from_an_authfile() {
    let tmp = tempfile::tempdir().unwrap();
    let users = tmp.path().join("users");
    // alice:wonderland (bcrypt).
    std::fs::write(
        &users,
        "alice:$2y$05$DPkd05OuxG7MQ/pWDC6RMONuiRyQKBSOi1uSMDzTZPxaCsOkYRR0O\n",
    )
    .unwrap();
    let config = tmp.path().join("wharf.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nmode = \"htpasswd\"\nhtpasswd = \"{}\"\n[[auth.rules]]\nsubjects = [\"alice\"]\n\
             repositories = [\"**\"]\nactions = [\"*\"]\n",
            users.display()
        ),
    )
    .unwrap();
    let reg = Wharf::start_with(&tmp.path().join("reg"), &["--config", config.to_str().unwrap()], None);
    // An image pushed as alice.
    let c = client();
    let basic = "YWxpY2U6d29uZGVybGFuZA=="; // alice:wonderland
    let config_blob = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let d = wharf_oci::Digest::sha256_of(&config_blob).to_string();
    let r = c
        .post(reg.url(&format!("/v2/team/app/blobs/uploads/?digest={d}")))
        .header("Authorization", format!("Basic {basic}"))
        .body(config_blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let manifest = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d, "size": config_blob.len()},
        "layers": []}))
    .unwrap();
    let r = c
        .put(reg.url("/v2/team/app/manifests/v1"))
        .header("Authorization", format!("Basic {basic}"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let auth_json = tmp.path().join("auth.json");
    std::fs::write(
        &auth_json,
        format!("{{\"auths\": {{\"{}\": {{\"auth\": \"{basic}\"}}}}}}", reg.addr),
    )
    .unwrap();
    let name = format!("{}/team/app:v1", reg.addr);
    let digest = |extra: &[&str], env: &[(&str, &std::path::Path)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg("digest")
            .args(extra)
            .arg(&name)
            .env("DOCKER_CONFIG", tmp.path().join("no-docker-config"))
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("XDG_RUNTIME_DIR")
            .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = digest(&[], &[]);
    assert!(
        !ok && err.contains("username and password"),
        "no credentials anywhere: {err}"
    );
    let (ok, err) = digest(&["--authfile", auth_json.to_str().unwrap()], &[]);
    assert!(ok, "--authfile: {err}");
    let (ok, err) = digest(&[], &[("REGISTRY_AUTH_FILE", &auth_json)]);
    assert!(ok, "$REGISTRY_AUTH_FILE: {err}");
}
