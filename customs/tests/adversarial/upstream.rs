//! A hostile upstream (finding 6 of issue 10): an endless manifest, a
//! manifest trickled a byte a second, an upstream that never answers and a
//! blob that stalls after its headers, against one real `customs gateway`
//! whose second registry is a real, honest `docker-registry` holding the
//! same blob. Each must end in a clear error within its timeout, with the
//! gateway's memory bounded, and never hold up the honest registry.

use crate::support::*;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The gateway's upstream bounds in these tests (seconds): short, so the
/// suite stays fast, and distinct, so each error names the one that fired.
const IDLE: u64 = 3;
const FIRST_BYTE: u64 = 2;
const BODY: u64 = 4;

/// What the hostile registry serves for `stall/app`: a valid manifest (the
/// honest registry's, byte for byte), its config, and a layer it stalls on.
struct StallImage {
    manifest: Bytes,
    media_type: String,
    config_digest: String,
    config: Bytes,
    layer_digest: String,
    layer_size: u64,
}

/// A hostile registry on a loopback port, on its own runtime thread.
fn start_hostile(image: Arc<StallImage>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = axum::Router::new().fallback(move |req: Request<Body>| {
                let image = image.clone();
                async move { hostile(&image, req.uri().path()).await }
            });
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}

async fn hostile(image: &StallImage, path: &str) -> Response<Body> {
    let ok = |body: Body, media_type: &str| {
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", media_type)
            .body(body)
            .unwrap()
    };
    let manifest_type = "application/vnd.oci.image.manifest.v1+json";
    match path {
        "/v2/" | "/v2" => ok(Body::from("{}"), "application/json"),
        // An endless manifest: 64 KiB of spaces, forever, as fast as the
        // gateway reads.
        p if p.starts_with("/v2/endless/app/manifests/") => {
            let chunk = Bytes::from(vec![b' '; 64 * 1024]);
            let s =
                futures_util::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
            ok(Body::from_stream(s), manifest_type)
        }
        // A manifest trickled one byte a second: the idle timeout never
        // fires, only the whole-body bound stops it.
        p if p.starts_with("/v2/slow/app/manifests/") => {
            let s = futures_util::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Some((Ok::<_, std::io::Error>(Bytes::from_static(b" ")), ()))
            });
            ok(Body::from_stream(s), manifest_type)
        }
        // Accepts the request and never answers.
        p if p.starts_with("/v2/silent/app/") => std::future::pending::<Response<Body>>().await,
        p if p.starts_with("/v2/stall/app/manifests/") => {
            ok(Body::from(image.manifest.clone()), &image.media_type)
        }
        p if p == format!("/v2/stall/app/blobs/{}", image.config_digest) => {
            ok(Body::from(image.config.clone()), "application/octet-stream")
        }
        // The layer: headers and a few bytes, then nothing, forever.
        p if p == format!("/v2/stall/app/blobs/{}", image.layer_digest) => {
            let head = futures_util::stream::once(async {
                Ok::<_, std::io::Error>(Bytes::from_static(b"\x1f\x8b\x08\x00"))
            });
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/octet-stream")
                .header("content-length", image.layer_size.to_string())
                .body(Body::from_stream(
                    head.chain(futures_util::stream::pending()),
                ))
                .unwrap()
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header("content-type", "application/json")
            .body(Body::from(
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}"#,
            ))
            .unwrap(),
    }
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The stall image, built from an image pushed to the honest registry.
fn stall_image(layout: &Path, tag_digest: &str) -> StallImage {
    let blob = |d: &str| {
        Bytes::from(
            std::fs::read(
                layout
                    .join("blobs/sha256")
                    .join(d.trim_start_matches("sha256:")),
            )
            .unwrap(),
        )
    };
    let manifest = blob(tag_digest);
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    StallImage {
        media_type: m["mediaType"]
            .as_str()
            .unwrap_or("application/vnd.oci.image.manifest.v1+json")
            .to_owned(),
        config_digest: m["config"]["digest"].as_str().unwrap().to_owned(),
        config: blob(m["config"]["digest"].as_str().unwrap()),
        layer_digest: layers[0]["digest"].as_str().unwrap().to_owned(),
        layer_size: layers[0]["size"].as_u64().unwrap(),
        manifest,
    }
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

#[test]
fn a_hostile_upstream_gets_bounded_errors_and_never_holds_up_an_honest_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let honest = Registry::start(&dir.join("registry"));
    let tag_digest = make_image(&dir.join("layout"), "v1", &[300_000], &[], 61);
    push(&dir.join("layout"), "v1", honest.addr, "app/repo");
    let image = Arc::new(stall_image(&dir.join("layout"), &tag_digest));
    let hostile = start_hostile(image.clone());

    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw_dir = dir.join("gw");
    let args: Vec<String> = [
        strings(&["gateway", "--data-dir", gw_dir.to_str().unwrap()]),
        strings(&["--listen", &addr.to_string()]),
        strings(&["--upstream", &format!("http://{hostile}")]),
        vec![
            "--registry".into(),
            format!("{}=http://{}", honest.addr, honest.addr),
        ],
        strings(&["--upstream-idle-timeout-secs", &IDLE.to_string()]),
        strings(&[
            "--upstream-first-byte-timeout-secs",
            &FIRST_BYTE.to_string(),
        ]),
        strings(&["--upstream-body-timeout-secs", &BODY.to_string()]),
    ]
    .concat();
    let gw = Customs::spawn(&args, addr, &gw_dir);
    let pid = gw.proc.child.id();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let base = gw.url();

    // 1. An endless manifest is cut off at 4 MiB: skopeo and a plain HTTP
    //    client get a clear error, and the gateway's memory stays bounded.
    let rss_before = rss_kib(pid);
    for i in 0..3 {
        let (ok, err, took) = skopeo_pull_within(
            &format!("{addr}/endless/app:v{i}"),
            &dir.join(format!("endless-{i}")),
            Duration::from_secs(30),
        );
        assert!(!ok, "pulled an endless manifest");
        assert!(
            err.contains("larger than the 4194304-byte limit"),
            "skopeo's error does not name the cap ({took:?}): {err}\n{}",
            gw.log_text()
        );
    }
    let (status, body) = rt.block_on(async {
        let r = http
            .get(format!("{base}/v2/endless/app/manifests/v9"))
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    });
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("UNAVAILABLE") && body.contains("cut off"),
        "{body}"
    );
    let grown_mib = rss_kib(pid).saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 64,
        "the gateway grew by {grown_mib} MiB reading endless manifests"
    );

    // 2. A manifest trickled a byte a second ends at the body timeout.
    let (ok, err, took) = skopeo_pull_within(
        &format!("{addr}/slow/app:v1"),
        &dir.join("slow"),
        Duration::from_secs(30),
    );
    assert!(!ok);
    assert!(err.contains("upstream body timeout"), "{err}");
    assert!(
        took < Duration::from_secs(BODY + 6),
        "a trickled manifest held the client for {took:?}"
    );

    // 3. An upstream that accepts and never answers ends at the first-byte
    //    timeout.
    let (ok, err, took) = skopeo_pull_within(
        &format!("{addr}/silent/app:v1"),
        &dir.join("silent"),
        Duration::from_secs(30),
    );
    assert!(!ok);
    assert!(err.contains("upstream first-byte timeout"), "{err}");
    assert!(took < Duration::from_secs(FIRST_BYTE + 6), "{took:?}");

    // 4. A stalled blob: the manifest is admitted (audit mode), the blob's
    //    headers and a few bytes arrive, then nothing. The client's request
    //    must end in an error within the idle timeout, and meanwhile the
    //    honest registry's copy of the same blob must be pulled in full.
    rt.block_on(async {
        let accept = "application/vnd.oci.image.manifest.v1+json";
        let r = http
            .get(format!("{base}/v2/stall/app/manifests/v1"))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        let layer = image.layer_digest.clone();
        let layer_size = image.layer_size;
        let stalled = tokio::spawn({
            let http = http.clone();
            let url = format!("{base}/v2/stall/app/blobs/{layer}");
            async move {
                let started = Instant::now();
                let r = http.get(url).send().await;
                let outcome = match r {
                    Err(e) => Err(format!("request: {e}")),
                    Ok(r) => {
                        let status = r.status();
                        match r.bytes().await {
                            Ok(b) if status == 200 && b.len() as u64 == layer_size => Ok(b.len()),
                            Ok(b) => Err(format!("{status} with {} bytes", b.len())),
                            Err(e) => Err(format!("{status}, body: {e}")),
                        }
                    }
                };
                (outcome, started.elapsed())
            }
        });
        // The stall is in progress: pull the honest registry's image,
        // which shares the stalled blob.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!stalled.is_finished(), "the stalled request ended early");
        let ns = format!("ns={}", honest.addr);
        let started = Instant::now();
        let m = http
            .get(format!("{base}/v2/app/repo/manifests/v1?{ns}"))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(m.status(), 200);
        assert_eq!(sha256_hex(&m.bytes().await.unwrap()), tag_digest);
        for d in [&image.config_digest, &image.layer_digest] {
            let r = http
                .get(format!("{base}/v2/app/repo/blobs/{d}?{ns}"))
                .timeout(Duration::from_secs(IDLE))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let b = r
                .bytes()
                .await
                .unwrap_or_else(|e| panic!("the honest pull of {d} was held up: {e}"));
            assert_eq!(sha256_hex(&b), *d);
        }
        assert!(
            !stalled.is_finished(),
            "the honest pull ({:?}) only completed after the stall ended",
            started.elapsed()
        );
        let (outcome, took) = stalled.await.unwrap();
        assert!(
            outcome.is_err(),
            "a stalled blob was served whole: {outcome:?}"
        );
        assert!(
            took < Duration::from_secs(IDLE + 4),
            "the stalled blob held the client for {took:?}"
        );
    });
    assert!(
        gw.log_text().contains("upstream idle-read timeout"),
        "the gateway log does not say why: {}",
        gw.log_text()
    );
}
