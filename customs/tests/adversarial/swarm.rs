//! A hostile peer against the seed (issue 10, finding 5): with a
//! certificate from the fleet's own CA it opens mTLS connections to the
//! gateway's piece endpoint, asks for pieces (pipelined, so the responses
//! cannot all sit in socket buffers) and never reads them. Before the fix
//! the seed's single upload slot stayed taken for as long as the
//! connection lived and every honest download waited behind it; now a
//! stalled upload gives up its slot after `SERVE_IDLE` (5 s), and one
//! requester never holds more than one of the seed's two slots.

use crate::support::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1024 * 1024;
/// Pieces of blobs up to 64 MiB.
const PIECE: usize = 256 * 1024;
/// The role name the gateway's certificate carries (before and after the
/// dev certificates lost `localhost`).
const GATEWAY_NAME: &str = "gateway.customs.internal";
/// Pipelined requests per hostile connection: 16 MiB of responses, far more
/// than loopback socket buffers hold, so the seed's writes block.
const PIPELINED: usize = 64;

fn client_config(pki: &Path, name: &str) -> Arc<rustls::ClientConfig> {
    let read = |f: &str| std::fs::read(pki.join(f)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&read("ca.pem")) {
        roots.add(c.unwrap()).unwrap();
    }
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read(&format!("{name}.pem")))
            .map(|c| c.unwrap())
            .collect();
    let key = PrivateKeyDer::from_pem_slice(&read(&format!("{name}.key"))).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .unwrap(),
    )
}

async fn connect(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    small_window: bool,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if small_window {
        // A tiny receive window: the seed's sends stall after a few KiB.
        sock.set_recv_buffer_size(4096).unwrap();
    }
    let tcp = sock.connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(cfg.clone())
        .connect(ServerName::try_from(GATEWAY_NAME).unwrap(), tcp)
        .await
        .unwrap()
}

/// Asks for piece 0 of `hex` `PIPELINED` times and never reads.
async fn never_read(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    hex: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut s = connect(cfg, addr, true).await;
    let one = format!("GET /pieces/{hex}/0 HTTP/1.1\r\nHost: {GATEWAY_NAME}\r\n\r\n");
    s.write_all(one.repeat(PIPELINED).as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    s
}

/// Asks for piece 0 of `hex` and reads the whole answer: its status line
/// and how many bytes came.
async fn fetch_piece(
    cfg: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    hex: &str,
) -> (String, usize) {
    let mut s = connect(cfg, addr, false).await;
    let req = format!(
        "GET /pieces/{hex}/0 HTTP/1.1\r\nHost: {GATEWAY_NAME}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Read to the end; a close without close_notify ends it too.
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&all[..all.len().min(200)]).into_owned();
    let status = text.lines().next().unwrap_or_default().to_owned();
    (status, all.len())
}

fn first_layer(layout: &Path, manifest_digest: &str) -> String {
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.join("blobs/sha256").join(&manifest_digest[7..])).unwrap(),
    )
    .unwrap();
    m["layers"][0]["digest"].as_str().unwrap().to_owned()
}

#[test]
fn a_peer_that_never_reads_does_not_starve_the_swarm() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    // `old`: already in the swarm, the hostile peer's target; `new`: what
    // an honest node pulls while the attack goes on.
    let old = make_image(&dir.join("old"), "v1", &[MIB], &[], 31);
    push(&dir.join("old"), "v1", registry.addr, "team/old");
    make_image(&dir.join("new"), "v1", &[3 * MIB], &[], 32);
    push(&dir.join("new"), "v1", registry.addr, "team/new");
    let seed: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let fleet = Fleet::up(
        &dir.join("up"),
        &registry.url(),
        1,
        &[
            "--upload-listen",
            &seed.to_string(),
            "--upload-limit",
            "4000000",
        ],
    );
    let peer = fleet.peers[0];
    // The seed holds `old`'s layer once a node has pulled it.
    let (ok, err, _) = skopeo_pull_within(
        &format!("{peer}/team/old:v1"),
        &dir.join("pulled-old"),
        Duration::from_secs(60),
    );
    assert!(ok, "{err}");
    let hex = first_layer(&dir.join("old"), &old)[7..].to_owned();

    // A hostile node: a valid peer certificate of the fleet's CA.
    let pki = dir.join("up/pki");
    customs_tls::write_dev_pki(&pki, &[("peer-66", customs_tls::Role::Peer)]).unwrap();
    let hostile = client_config(&pki, "peer-66");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // 1. A stalled upload gives its slot back: one connection takes a slot
    //    and stops reading; the next request of the same node (which may
    //    hold one slot at a time) gets its piece once the first is cut off,
    //    within the seed's idle deadline, instead of never.
    let held = rt.block_on(never_read(&hostile, seed, &hex));
    std::thread::sleep(Duration::from_millis(1500));
    let start = Instant::now();
    let (status, got) = rt
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(20), fetch_piece(&hostile, seed, &hex)).await
        })
        .expect("the seed never gave the stalled connection's slot back");
    let waited = start.elapsed();
    assert!(status.contains(" 200 "), "{status}");
    assert!(got > PIECE, "a short piece: {got} bytes");
    assert!(
        waited < Duration::from_secs(10),
        "the slot came back after {waited:?}"
    );
    drop(held);

    // 2. Several stalled connections at once: an honest pull of an image
    //    the swarm has not seen (every piece from the seed) completes at
    //    about its normal speed (3 MiB at 4 MB/s is under a second).
    let held: Vec<_> = (0..3)
        .map(|_| rt.block_on(never_read(&hostile, seed, &hex)))
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let (ok, err, took) = skopeo_pull_within(
        &format!("{peer}/team/new:v1"),
        &dir.join("pulled-new"),
        Duration::from_secs(40),
    );
    assert!(ok, "the honest pull failed or hung under attack: {err}");
    assert!(
        took < Duration::from_secs(12),
        "the honest pull took {took:?} under attack"
    );
    drop(held);
}
