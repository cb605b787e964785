//! A fault-injecting, counting, rate-limiting HTTP proxy in front of the real
//! upstream registry: it counts blob fetches (to prove one fetch per blob),
//! can corrupt blob bodies (an upstream serving wrong bytes), and can cap
//! throughput (a bandwidth-limited upstream for benchmarks). The registry
//! behind it is real; only the faults are injected.

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, Response, StatusCode};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Default)]
pub struct ProxyState {
    /// Completed or started blob GETs per digest.
    pub blob_gets: Mutex<HashMap<String, u64>>,
    /// Body bytes sent to clients.
    pub bytes_out: AtomicU64,
    /// Flip a byte near the end of every blob body.
    pub corrupt_blobs: AtomicBool,
    /// Bytes per second cap over all responses (0 = unlimited).
    pub rate: AtomicU64,
    /// Answer cosign `.sig` manifest requests with a 5 MiB manifest (a
    /// hostile registry; the real one refuses to store manifests over 4 MiB).
    pub oversized_signatures: AtomicBool,
    next_free: Mutex<Option<Instant>>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    pub state: Arc<ProxyState>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Proxy {
    /// Starts a proxy to `upstream` (an `http://host:port` URL) on its own
    /// runtime thread.
    pub fn start(upstream: &str) -> Proxy {
        let state = Arc::new(ProxyState::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let upstream = upstream.trim_end_matches('/').to_owned();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let client = reqwest::Client::new();
                let app = axum::Router::new().fallback(forward).with_state((
                    st,
                    client,
                    Arc::new(upstream),
                ));
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Proxy {
            addr,
            state,
            shutdown: Some(tx),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many times each blob was fetched.
    pub fn blob_counts(&self) -> HashMap<String, u64> {
        self.state.blob_gets.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

type St = (Arc<ProxyState>, reqwest::Client, Arc<String>);

async fn pace(st: &ProxyState, n: usize) {
    let rate = st.rate.load(Ordering::Relaxed);
    if rate == 0 {
        return;
    }
    let cost = Duration::from_secs_f64(n as f64 / rate as f64);
    let at = {
        let mut next = st.next_free.lock().unwrap();
        let now = Instant::now();
        let start = next.map_or(now, |t| t.max(now));
        *next = Some(start + cost);
        start + cost
    };
    tokio::time::sleep_until(at).await;
}

async fn forward(State((st, client, upstream)): State<St>, req: Request<Body>) -> Response<Body> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    if st.oversized_signatures.load(Ordering::SeqCst)
        && path.contains("/manifests/sha256-")
        && path.split('?').next().unwrap_or("").ends_with(".sig")
    {
        return oversized_manifest(req.method() == "HEAD");
    }
    let is_blob_get = req.method() == "GET" && path.contains("/blobs/sha256:");
    if is_blob_get {
        let digest = path
            .rsplit('/')
            .next()
            .unwrap_or("")
            .split('?')
            .next()
            .unwrap_or("")
            .to_owned();
        *st.blob_gets.lock().unwrap().entry(digest).or_insert(0) += 1;
    }
    let mut up = client.request(req.method().clone(), format!("{upstream}{path}"));
    for (k, v) in req.headers() {
        if k != "host" {
            up = up.header(k, v);
        }
    }
    let resp = match up.send().await {
        Ok(r) => r,
        Err(e) => {
            return Response::builder()
                .status(StatusCode::BAD_GATEWAY)
                .body(Body::from(e.to_string()))
                .unwrap();
        }
    };
    let mut b = Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        if k != "transfer-encoding" && k != "connection" {
            b = b.header(k, v);
        }
    }
    let total: u64 = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let corrupt =
        is_blob_get && st.corrupt_blobs.load(Ordering::Relaxed) && resp.status().is_success();
    let st2 = st.clone();
    let mut seen = 0u64;
    let body = resp.bytes_stream().then(move |chunk| {
        let st = st2.clone();
        let start = seen;
        if let Ok(c) = &chunk {
            seen += c.len() as u64;
        }
        let seen = seen;
        async move {
            let chunk = chunk.map_err(std::io::Error::other)?;
            let mut v = chunk.to_vec();
            if corrupt && total > 0 && start < total && total - 1 < seen {
                // Flip the last byte: only a whole-blob digest check sees it.
                let i = (total - 1 - start) as usize;
                v[i] ^= 0xff;
            } else if corrupt && total == 0 && start == 0 && !v.is_empty() {
                v[0] ^= 0xff;
            }
            pace(&st, v.len()).await;
            st.bytes_out.fetch_add(v.len() as u64, Ordering::Relaxed);
            Ok::<_, std::io::Error>(bytes::Bytes::from(v))
        }
    });
    b.body(Body::from_stream(body)).unwrap()
}

/// A syntactically valid OCI manifest padded to 5 MiB, with its true digest.
fn oversized_manifest(head: bool) -> Response<Body> {
    use sha2::Digest as _;
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            "size": 2
        },
        "layers": [],
        "annotations": {"pad": "x".repeat(5 * 1024 * 1024)}
    })
    .to_string();
    let digest = format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(body.as_bytes()))
    );
    Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .header("Docker-Content-Digest", digest)
        .header("Content-Length", body.len())
        .body(if head {
            Body::empty()
        } else {
            Body::from(body)
        })
        .unwrap()
}
