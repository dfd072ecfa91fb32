//! Every endpoint of the distribution API and its error paths, against a real server on an ephemeral port.

mod common;

use common::{Server, blob_digest, error_code, image_manifest, json};
use reqwest::StatusCode;
use wharf_oci::{Algorithm, Digest, media};

#[tokio::test]
async fn base_endpoint_and_unknown_paths() {
    let s = Server::start().await;
    let r = s.get("/v2/").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["docker-distribution-api-version"], "registry/2.0");
    let r = s.get("/v2/a/bogus/x").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "UNSUPPORTED");
    let r = s.client.delete(s.url("/v2/a/tags/list")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(r).await, "UNSUPPORTED");
}

#[tokio::test]
async fn names_are_validated_before_storage() {
    let s = Server::start().await;
    // Sent raw: an HTTP client library would normalize the dot segments away before they reach the server.
    for path in [
        "/v2/a/%2e%2e/b/tags/list",
        "/v2/a/%2E%2E/%2E%2E/etc/manifests/latest",
        "/v2/../../etc/tags/list",
        "/v2/UPPER/tags/list",
        "/v2/a//b/manifests/latest",
        "/v2/-a/blobs/uploads/",
    ] {
        let (status, body) = s.raw_get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("NAME_INVALID"), "{path}: {body}");
    }
    let r = s.get("/v2/a/blobs/sha256:..%2f..%2fetc").await;
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    let r = s
        .put_manifest("a", "bad%2ftag", media::OCI_MANIFEST, b"{}".to_vec())
        .await;
    assert_eq!(error_code(r).await, "TAG_INVALID");
}

#[tokio::test]
async fn monolithic_upload_head_get_range_delete() {
    let s = Server::start().await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let d = blob_digest(&data);
    let r = s.post_blob("lib/x", &d, data.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["location"], format!("/v2/lib/x/blobs/{d}").as_str());
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());

    let r = s.head(&format!("/v2/lib/x/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-length"], "100000");
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());

    let r = s.get(&format!("/v2/lib/x/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);

    let r = s
        .client
        .get(s.url(&format!("/v2/lib/x/blobs/{d}")))
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], "bytes 10-19/100000");
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[10..20]);

    let r = s
        .client
        .get(s.url(&format!("/v2/lib/x/blobs/{d}")))
        .header("Range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["content-range"], "bytes */100000");

    // Another repository does not see it until it links (mounts) it.
    let r = s.head(&format!("/v2/lib/y/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let r = s
        .client
        .delete(s.url(&format!("/v2/lib/x/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = s.get(&format!("/v2/lib/x/blobs/{d}")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    let r = s
        .client
        .delete(s.url(&format!("/v2/lib/x/blobs/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
}

#[tokio::test]
async fn digest_mismatch_stores_nothing() {
    let s = Server::start().await;
    let claimed = blob_digest(b"something else");
    let r = s.post_blob("a", &claimed, b"actual bytes".to_vec()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert_eq!(
        s.head(&format!("/v2/a/blobs/{claimed}")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(s.stored_blob_files(), 0);
    assert_eq!(s.upload_dirs(), 0, "a failed upload leaves no session behind");

    // Same through a session closed with a wrong digest.
    let loc = s.start_upload("a").await;
    let r = s
        .client
        .put(s.url(&format!("{loc}?digest={claimed}")))
        .body("actual")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    assert_eq!(s.stored_blob_files(), 0);
    let r = s.get(&loc).await;
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn chunked_upload_with_status_and_out_of_order_chunk() {
    let s = Server::start().await;
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    let d = blob_digest(&data);
    let r = s.client.post(s.url("/v2/c/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["range"], "0-0");
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let uuid = r.headers()["docker-upload-uuid"].to_str().unwrap().to_owned();
    assert!(loc.ends_with(&uuid));

    let r = s.patch_chunk(&loc, 0, &data[..1000]).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["range"], "0-999");

    // A chunk that does not start where the upload ends is refused and changes nothing.
    let r = s.patch_chunk(&loc, 1500, &data[1500..2000]).await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_INVALID");

    let r = s.get(&loc).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"], "0-999");

    let r = s.patch_chunk(&loc, 1000, &data[1000..2000]).await;
    assert_eq!(r.headers()["range"], "0-1999");
    // Last chunk rides on the PUT.
    let r = s
        .client
        .put(s.url(&format!("{loc}?digest={d}")))
        .header("Content-Range", "2000-2999")
        .body(data[2000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    assert_eq!(
        s.get(&format!("/v2/c/blobs/{d}")).await.bytes().await.unwrap().as_ref(),
        &data[..]
    );
    // The session is gone.
    assert_eq!(error_code(s.get(&loc).await).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn streamed_upload_and_post_then_put() {
    let s = Server::start().await;
    let data = vec![42u8; 70_000];
    let d = blob_digest(&data);
    let loc = s.start_upload("st").await;
    let r = s.client.patch(s.url(&loc)).body(data.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(r.headers()["range"], "0-69999");
    let r = s
        .client
        .put(s.url(&format!("{loc}?digest={d}")))
        .header("Content-Length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let other = b"post then put".to_vec();
    let od = blob_digest(&other);
    let loc = s.start_upload("st").await;
    let r = s
        .client
        .put(s.url(&format!("{loc}?digest={od}")))
        .body(other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(s.head(&format!("/v2/st/blobs/{od}")).await.status(), StatusCode::OK);

    let loc = s.start_upload("st").await;
    let r = s.client.put(s.url(&loc)).body("x").send().await.unwrap();
    assert_eq!(error_code(r).await, "DIGEST_INVALID", "PUT without ?digest=");
}

#[tokio::test]
async fn cancel_and_foreign_sessions() {
    let s = Server::start().await;
    let loc = s.start_upload("owner").await;
    let id = loc.rsplit('/').next().unwrap().to_owned();
    // Another repository cannot touch the session.
    let r = s.get(&format!("/v2/intruder/blobs/uploads/{id}")).await;
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    let r = s.get("/v2/owner/blobs/uploads/not-a-uuid").await;
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    let (status, body) = s.raw_get("/v2/owner/blobs/uploads/..").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("BLOB_UPLOAD_UNKNOWN"), "{body}");

    let r = s.client.delete(s.url(&loc)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = s.get(&loc).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    let r = s.client.delete(s.url(&loc)).send().await.unwrap();
    assert_eq!(error_code(r).await, "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(s.upload_dirs(), 0);
}

#[tokio::test]
async fn cross_repository_mount() {
    let s = Server::start().await;
    let data = b"layer shared by two repositories".to_vec();
    let d = blob_digest(&data);
    s.post_blob("src/app", &d, data).await;
    let r = s
        .client
        .post(s.url(&format!("/v2/dst/app/blobs/uploads/?mount={d}&from=src/app")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["location"], format!("/v2/dst/app/blobs/{d}").as_str());
    assert_eq!(s.head(&format!("/v2/dst/app/blobs/{d}")).await.status(), StatusCode::OK);
    assert_eq!(s.stored_blob_files(), 1, "stored once, linked twice");

    // From a repository that lacks it: a normal upload session.
    let missing = blob_digest(b"nowhere");
    let r = s
        .client
        .post(s.url(&format!("/v2/dst/app/blobs/uploads/?mount={missing}&from=src/app")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/v2/dst/app/blobs/uploads/")
    );
    let r = s
        .client
        .post(s.url(&format!("/v2/dst/app/blobs/uploads/?mount={d}&from=Bad..Name")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "NAME_INVALID");
}

#[tokio::test]
async fn sha512_blobs() {
    let s = Server::start().await;
    let data = b"sha512 content".to_vec();
    let d = Digest::of(Algorithm::Sha512, &data).to_string();
    assert_eq!(s.post_blob("h", &d, data.clone()).await.status(), StatusCode::CREATED);
    assert_eq!(
        s.get(&format!("/v2/h/blobs/{d}")).await.bytes().await.unwrap().as_ref(),
        &data[..]
    );
    // Chunked: the algorithm is only known at the end.
    let more = b"chunked sha512 content".to_vec();
    let md = Digest::of(Algorithm::Sha512, &more).to_string();
    let loc = s.start_upload("h").await;
    s.patch_chunk(&loc, 0, &more[..5]).await;
    s.patch_chunk(&loc, 5, &more[5..]).await;
    let r = s.client.put(s.url(&format!("{loc}?digest={md}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        s.get(&format!("/v2/h/blobs/{md}"))
            .await
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        &more[..]
    );
}

#[tokio::test]
async fn manifest_lifecycle_by_tag_and_digest() {
    let s = Server::start().await;
    let (config, layer) = (b"{}".to_vec(), b"layer".to_vec());
    let body = image_manifest(media::OCI_MANIFEST, &config, &[&layer], None);

    // Blobs missing: refused with the digest in the detail.
    let r = s.put_manifest("m", "v1", media::OCI_MANIFEST, body.clone()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let e = json(r).await;
    assert_eq!(e["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(e["errors"][0]["detail"]["digest"], blob_digest(&config));

    s.post_blob("m", &blob_digest(&config), config.clone()).await;
    s.post_blob("m", &blob_digest(&layer), layer.clone()).await;
    let r = s.put_manifest("m", "v1", media::OCI_MANIFEST, body.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let d = blob_digest(&body);
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    assert_eq!(r.headers()["location"], format!("/v2/m/manifests/{d}").as_str());

    for reference in ["v1", d.as_str()] {
        let r = s.get(&format!("/v2/m/manifests/{reference}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], media::OCI_MANIFEST);
        assert_eq!(r.headers()["docker-content-digest"], d.as_str());
        assert_eq!(r.bytes().await.unwrap().as_ref(), &body[..], "byte-exact");
        let r = s.head(&format!("/v2/m/manifests/{reference}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-length"], body.len().to_string().as_str());
    }

    // Content negotiation: a client that only takes Docker manifests does not get an OCI one.
    let r = s
        .client
        .get(s.url("/v2/m/manifests/v1"))
        .header("Accept", media::DOCKER_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");

    // Tag moves to a new manifest.
    let body2 = image_manifest(media::OCI_MANIFEST, &config, &[], None);
    let d2 = blob_digest(&body2);
    assert_eq!(
        s.put_manifest("m", "v1", media::OCI_MANIFEST, body2.clone())
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        s.get("/v2/m/manifests/v1").await.headers()["docker-content-digest"],
        d2.as_str()
    );
    // The old revision is still there by digest.
    assert_eq!(s.get(&format!("/v2/m/manifests/{d}")).await.status(), StatusCode::OK);

    // Delete by tag, then by digest (which also removes tags pointing at it).
    s.put_manifest("m", "v2", media::OCI_MANIFEST, body.clone()).await;
    let r = s.client.delete(s.url("/v2/m/manifests/v1")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(error_code(s.get("/v2/m/manifests/v1").await).await, "MANIFEST_UNKNOWN");
    let r = s
        .client
        .delete(s.url(&format!("/v2/m/manifests/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(s.get("/v2/m/manifests/v2").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        s.get(&format!("/v2/m/manifests/{d}")).await.status(),
        StatusCode::NOT_FOUND
    );
    let r = s
        .client
        .delete(s.url(&format!("/v2/m/manifests/{d}")))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn manifest_errors() {
    let s = Server::start().await;
    let r = s
        .put_manifest("e", "t", media::OCI_MANIFEST, b"{not json".to_vec())
        .await;
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");
    let r = s
        .put_manifest(
            "e",
            "t",
            media::OCI_MANIFEST,
            br#"{"schemaVersion":2,"layers":[]}"#.to_vec(),
        )
        .await;
    assert_eq!(error_code(r).await, "MANIFEST_INVALID", "no config");

    let config = b"{}".to_vec();
    s.post_blob("e", &blob_digest(&config), config.clone()).await;
    let body = image_manifest(media::OCI_MANIFEST, &config, &[], None);
    let wrong = blob_digest(b"other");
    let r = s.put_manifest("e", &wrong, media::OCI_MANIFEST, body.clone()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    // By its own digest, including sha512.
    let r = s
        .put_manifest("e", &blob_digest(&body), media::OCI_MANIFEST, body.clone())
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let d512 = Digest::of(Algorithm::Sha512, &body).to_string();
    let r = s.put_manifest("e", &d512, media::OCI_MANIFEST, body.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["docker-content-digest"], d512.as_str());
    assert_eq!(
        s.get(&format!("/v2/e/manifests/{d512}"))
            .await
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        &body[..]
    );

    // Over 4 MiB.
    let mut huge = image_manifest(media::OCI_MANIFEST, &config, &[], None);
    huge.truncate(huge.len() - 1);
    huge.extend_from_slice(br#","annotations":{"x":""#);
    huge.extend(std::iter::repeat_n(b'a', 4 << 20));
    huge.extend_from_slice(b"\"}}");
    let r = s.put_manifest("e", "huge", media::OCI_MANIFEST, huge).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(r).await, "MANIFEST_INVALID");

    let r = s.get("/v2/e/manifests/nope").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn docker_types_and_indexes_keep_their_media_type() {
    let s = Server::start().await;
    let config = b"{\"architecture\":\"amd64\"}".to_vec();
    let layer = b"docker layer".to_vec();
    s.post_blob("d", &blob_digest(&config), config.clone()).await;
    s.post_blob("d", &blob_digest(&layer), layer.clone()).await;
    let m = image_manifest(media::DOCKER_MANIFEST, &config, &[&layer], None);
    let md = blob_digest(&m);

    // An index whose child is missing is refused.
    let list = format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{md}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        media::DOCKER_MANIFEST_LIST,
        media::DOCKER_MANIFEST,
        m.len()
    )
    .into_bytes();
    let r = s
        .put_manifest("d", "multi", media::DOCKER_MANIFEST_LIST, list.clone())
        .await;
    assert_eq!(error_code(r).await, "MANIFEST_BLOB_UNKNOWN");

    assert_eq!(
        s.put_manifest("d", &md, media::DOCKER_MANIFEST, m.clone())
            .await
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(
        s.put_manifest("d", "multi", media::DOCKER_MANIFEST_LIST, list.clone())
            .await
            .status(),
        StatusCode::CREATED
    );
    let r = s
        .client
        .get(s.url("/v2/d/manifests/multi"))
        .header(
            "Accept",
            format!("{}, {}", media::DOCKER_MANIFEST_LIST, media::DOCKER_MANIFEST),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], media::DOCKER_MANIFEST_LIST);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &list[..]);
    let r = s.get(&format!("/v2/d/manifests/{md}")).await;
    assert_eq!(r.headers()["content-type"], media::DOCKER_MANIFEST);
}

#[tokio::test]
async fn tags_list_and_catalog_paginate() {
    let s = Server::start().await;
    let config = b"{}".to_vec();
    for repo in ["p/one", "p/two", "p/three"] {
        s.post_blob(repo, &blob_digest(&config), config.clone()).await;
    }
    let body = image_manifest(media::OCI_MANIFEST, &config, &[], None);
    for tag in ["c", "a", "e", "b", "d"] {
        assert_eq!(
            s.put_manifest("p/one", tag, media::OCI_MANIFEST, body.clone())
                .await
                .status(),
            StatusCode::CREATED
        );
    }
    let r = s.get("/v2/p/one/tags/list").await;
    assert!(r.headers().get("link").is_none());
    let j = json(r).await;
    assert_eq!(j["name"], "p/one");
    assert_eq!(j["tags"], serde_json::json!(["a", "b", "c", "d", "e"]));

    let r = s.get("/v2/p/one/tags/list?n=2").await;
    assert_eq!(r.headers()["link"], "</v2/p/one/tags/list?n=2&last=b>; rel=\"next\"");
    assert_eq!(json(r).await["tags"], serde_json::json!(["a", "b"]));
    let r = s.get("/v2/p/one/tags/list?n=2&last=b").await;
    assert_eq!(json(r).await["tags"], serde_json::json!(["c", "d"]));
    let r = s.get("/v2/p/one/tags/list?n=2&last=d").await;
    assert!(r.headers().get("link").is_none());
    assert_eq!(json(r).await["tags"], serde_json::json!(["e"]));
    let r = s.get("/v2/p/one/tags/list?n=x").await;
    assert_eq!(error_code(r).await, "PAGINATION_NUMBER_INVALID");

    let r = s.get("/v2/p/nothing/tags/list").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(r).await, "NAME_UNKNOWN");
    // A repository with blobs but no tags lists none.
    assert_eq!(
        json(s.get("/v2/p/two/tags/list").await).await["tags"],
        serde_json::json!([])
    );

    let j = json(s.get("/v2/_catalog").await).await;
    assert_eq!(j["repositories"], serde_json::json!(["p/one", "p/three", "p/two"]));
    let r = s.get("/v2/_catalog?n=1&last=p/one").await;
    assert_eq!(r.headers()["link"], "</v2/_catalog?n=1&last=p%2Fthree>; rel=\"next\"");
    assert_eq!(json(r).await["repositories"], serde_json::json!(["p/three"]));
}

#[tokio::test]
async fn referrers_track_subjects() {
    let s = Server::start().await;
    let config = b"{}".to_vec();
    s.post_blob("r", &blob_digest(&config), config.clone()).await;
    let subject_body = image_manifest(media::OCI_MANIFEST, &config, &[], None);
    let subject = blob_digest(&subject_body);
    s.put_manifest("r", "app", media::OCI_MANIFEST, subject_body.clone())
        .await;

    let empty = json(s.get(&format!("/v2/r/referrers/{subject}")).await).await;
    assert_eq!(empty["manifests"], serde_json::json!([]));

    let subject_desc = (media::OCI_MANIFEST, subject.as_str(), subject_body.len());
    let mut digests = Vec::new();
    for artifact in ["application/vnd.example.sbom", "application/vnd.example.sig"] {
        let mut sig = image_manifest(media::OCI_MANIFEST, &config, &[], Some(subject_desc));
        // Give each an artifactType.
        sig.truncate(sig.len() - 1);
        sig.extend_from_slice(format!(r#","artifactType":"{artifact}"}}"#).as_bytes());
        let d = blob_digest(&sig);
        let r = s.put_manifest("r", &d, media::OCI_MANIFEST, sig).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(r.headers()["oci-subject"], subject.as_str());
        digests.push(d);
    }
    let r = s.get(&format!("/v2/r/referrers/{subject}")).await;
    assert_eq!(r.headers()["content-type"], media::OCI_INDEX);
    let idx = json(r).await;
    assert_eq!(idx["mediaType"], media::OCI_INDEX);
    assert_eq!(idx["manifests"].as_array().unwrap().len(), 2);

    let r = s
        .get(&format!(
            "/v2/r/referrers/{subject}?artifactType=application/vnd.example.sig"
        ))
        .await;
    assert_eq!(r.headers()["oci-filters-applied"], "artifactType");
    let idx = json(r).await;
    assert_eq!(idx["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(idx["manifests"][0]["artifactType"], "application/vnd.example.sig");
    assert_eq!(idx["manifests"][0]["digest"], digests[1].as_str());

    // Deleting a referrer removes it from the list.
    s.client
        .delete(s.url(&format!("/v2/r/manifests/{}", digests[1])))
        .send()
        .await
        .unwrap();
    let idx = json(s.get(&format!("/v2/r/referrers/{subject}")).await).await;
    assert_eq!(idx["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(
        error_code(s.get("/v2/r/referrers/sha256:zz").await).await,
        "DIGEST_INVALID"
    );
}

#[tokio::test]
async fn concurrent_uploads_of_one_blob_store_it_once() {
    let s = Server::start().await;
    let data = vec![7u8; 300_000];
    let d = blob_digest(&data);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (client, url, data) = (
            s.client.clone(),
            s.url(&format!("/v2/con{i}/blobs/uploads/?digest={d}")),
            data.clone(),
        );
        tasks.push(tokio::spawn(async move {
            client.post(url).body(data).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    assert_eq!(s.stored_blob_files(), 1);
    for i in 0..8 {
        assert_eq!(s.head(&format!("/v2/con{i}/blobs/{d}")).await.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn upload_session_survives_restart() {
    let s = Server::start().await;
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 13) as u8).collect();
    let d = blob_digest(&data);
    let loc = s.start_upload("rs").await;
    s.patch_chunk(&loc, 0, &data[..2500]).await;
    let s = s.restart().await;
    let r = s.get(&loc).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"], "0-2499");
    s.patch_chunk(&loc, 2500, &data[2500..]).await;
    let r = s.client.put(s.url(&format!("{loc}?digest={d}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        s.get(&format!("/v2/rs/blobs/{d}"))
            .await
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        &data[..]
    );
}

#[tokio::test]
async fn large_blobs_stream_whole_and_in_ranges_across_windows() {
    let s = Server::start().await;
    let data: Vec<u8> = (0..10_000_003u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let d = blob_digest(&data);
    assert_eq!(s.post_blob("big", &d, data.clone()).await.status(), StatusCode::CREATED);
    let got = s.get(&format!("/v2/big/blobs/{d}")).await.bytes().await.unwrap();
    assert!(got == data, "full body differs");
    for (a, b) in [
        (8_388_600usize, 8_388_700usize),
        (4097, 9_999_999),
        (1_048_577, 10_000_002),
    ] {
        let r = s
            .client
            .get(s.url(&format!("/v2/big/blobs/{d}")))
            .header("Range", format!("bytes={a}-{b}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert!(r.bytes().await.unwrap() == data[a..=b], "range {a}-{b}");
    }
}

#[tokio::test]
async fn push_by_digest_with_tag_parameters() {
    let s = Server::start().await;
    let config = b"{}".to_vec();
    s.post_blob("tp", &blob_digest(&config), config.clone()).await;
    let body = image_manifest(media::OCI_MANIFEST, &config, &[], None);
    let d = blob_digest(&body);
    let r = s
        .client
        .put(s.url(&format!("/v2/tp/manifests/{d}?tag=v1&tag=latest")))
        .header("Content-Type", media::OCI_MANIFEST)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let tags: Vec<&str> = r
        .headers()
        .get_all("oci-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(tags, ["v1", "latest"]);
    for t in ["v1", "latest"] {
        assert_eq!(
            s.get(&format!("/v2/tp/manifests/{t}")).await.headers()["docker-content-digest"],
            d.as_str()
        );
    }
    let r = s
        .client
        .put(s.url(&format!("/v2/tp/manifests/{d}?tag=bad%2Ftag")))
        .header("Content-Type", media::OCI_MANIFEST)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await, "TAG_INVALID");
}
