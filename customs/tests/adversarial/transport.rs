//! See the crate docs in `main.rs`.
//!
//! Transport attacks (findings 7, 11, 13): a node holding a genuine peer
//! certificate answering as the gateway; a swarm configured over plain
//! HTTP; containerd reaching the gateway over the network. Handshake
//! timeouts and connection caps are played with real rustls connections
//! in `tls/src/https/tests.rs` (short limits, no 10 s waits).

use crate::support::*;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

fn customs(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_customs"))
        .args(args)
        .output()
        .unwrap()
}

fn certs(pki: &Path, issue: &[&str], extra: &[&str]) {
    let mut args = vec!["certs", "--out", pki.to_str().unwrap()];
    for i in issue {
        args.extend(["--issue", i]);
    }
    args.extend(extra);
    run_ok(Command::new(env!("CARGO_BIN_EXE_customs")).args(&args));
}

/// An mTLS server presenting `name`'s certificate that answers every OCI
/// request with a forged manifest and counts the requests it got.
fn impostor(rt: &tokio::runtime::Runtime, pki: &Path, name: &str) -> (SocketAddr, Arc<AtomicU64>) {
    let id = customs_tls::TlsIdentity::load(&customs_tls::TlsPaths::in_dir(pki, name)).unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        counter.fetch_add(1, Ordering::SeqCst);
        async {
            (
                [("content-type", "application/vnd.oci.image.manifest.v1+json")],
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#,
            )
        }
    });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(customs_tls::serve_mtls(
        listener,
        id.server_config().unwrap(),
        app,
        Arc::default(),
        tokio_util::sync::CancellationToken::new(),
    ));
    (addr, hits)
}

/// Finding 11: any peer certificate could pose as the gateway (clients
/// checked the URL's host, and every dev certificate named 127.0.0.1).
/// A real peer, told the gateway is at an address where a node with a
/// genuine peer certificate answers, must refuse it before sending a
/// request; the same impostor with a gateway certificate is reached (so
/// the test sees requests when the check is missing).
#[test]
fn a_peer_certificate_cannot_pose_as_the_gateway() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = dir.join("pki");
    certs(&pki, &["node-1:peer", "evil:peer", "gw:gateway"], &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (hostile, hostile_hits) = impostor(&rt, &pki, "evil");
    let (real, real_hits) = impostor(&rt, &pki, "gw");
    let p = |f: &str| pki.join(f).display().to_string();
    let peer_towards = |gateway: SocketAddr, name: &str| {
        let listen = format!("127.0.0.1:{}", free_port());
        let args = strings(&[
            "peer",
            "--gateway",
            &format!("https://{gateway}"),
            "--listen",
            &listen,
            "--data-dir",
            dir.join(name).to_str().unwrap(),
            "--tls-ca",
            &p("ca.pem"),
            "--tls-cert",
            &p("node-1.pem"),
            "--tls-key",
            &p("node-1.key"),
            "--default-registry",
            "registry.example",
        ]);
        let proc = spawn_customs(dir, name, &args);
        wait_for_port(listen.parse().unwrap(), Duration::from_secs(20));
        (proc, listen)
    };
    let (_a, via_hostile) = peer_towards(hostile, "peer-a");
    let (_b, via_real) = peer_towards(real, "peer-b");
    let resp = http_get_text(&format!("http://{via_hostile}/v2/team/app/manifests/v1"));
    assert!(
        !resp.contains("schemaVersion"),
        "the peer served the impostor's manifest: {resp}"
    );
    assert_eq!(
        hostile_hits.load(Ordering::SeqCst),
        0,
        "the peer sent a request to a server holding a peer certificate"
    );
    // Control: a server with the gateway role is talked to.
    let _ = http_get_text(&format!("http://{via_real}/v2/team/app/manifests/v1"));
    assert!(real_hits.load(Ordering::SeqCst) > 0);
    let log = std::fs::read_to_string(dir.join("peer-a.log")).unwrap();
    assert!(
        log.contains("does not carry the expected role") || log.contains("NotValidForName"),
        "the refusal is not named in the peer's log: {log}"
    );
}

/// Finding 11: swarm mode accepted an `http://` gateway or scheduler, so
/// anyone on the network could answer as either. The peer and the gateway
/// refuse to start and say why.
#[test]
fn swarm_mode_refuses_plain_http() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = dir.join("pki");
    certs(&pki, &["node-1:peer", "gw:gateway"], &[]);
    let p = |f: &str| pki.join(f).display().to_string();
    let data = dir.join("peer").display().to_string();
    let peer = |gateway: &str, scheduler: &str| {
        customs(&[
            "peer",
            "--gateway",
            gateway,
            "--scheduler",
            scheduler,
            "--listen",
            "127.0.0.1:0",
            "--peer-id",
            "node-1",
            "--gateway-key",
            &p("gw.pem"),
            "--tls-ca",
            &p("ca.pem"),
            "--tls-cert",
            &p("node-1.pem"),
            "--tls-key",
            &p("node-1.key"),
            "--data-dir",
            &data,
        ])
    };
    for (gateway, scheduler, named) in [
        ("http://127.0.0.1:5050", "https://127.0.0.1:5060", "gateway"),
        (
            "https://127.0.0.1:5051",
            "http://127.0.0.1:5060",
            "scheduler",
        ),
    ] {
        let out = peer(gateway, scheduler);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "the peer started with {named} over http"
        );
        assert!(
            err.contains(&format!("swarm mode refuses {named}")) && err.contains("https://"),
            "the reason is not named: {err}"
        );
    }
    let out = customs(&[
        "gateway",
        "--data-dir",
        dir.join("gw").to_str().unwrap(),
        "--upstream",
        "http://127.0.0.1:5000",
        "--scheduler",
        "http://127.0.0.1:5060",
        "--upload-listen",
        "127.0.0.1:0",
        "--tls-ca",
        &p("ca.pem"),
        "--tls-cert",
        &p("gw.pem"),
        "--tls-key",
        &p("gw.key"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("must be an https:// URL"), "{err}");
}

/// Finding 13: the node -> gateway path was plain HTTP, so a network
/// attacker could answer tag resolutions. With `--listen-tls-cert` the
/// gateway serves containerd over HTTPS, and `containerd-config --ca`
/// writes the CA containerd authenticates it with: a real containerd
/// pulls through it, and without the `ca` entry it refuses the gateway.
#[test]
fn containerd_pulls_from_the_gateway_over_https() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    make_image(&dir.join("layout"), "v1", &[200_000], &[], 31);
    push(&dir.join("layout"), "v1", registry.addr, "team/app");
    let pki = dir.join("pki");
    certs(
        &pki,
        &["gw:gateway"],
        &["--san", "gw=127.0.0.1,gateway.example"],
    );
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let args = strings(&[
        "gateway",
        "--data-dir",
        dir.join("gw").to_str().unwrap(),
        "--listen",
        &addr.to_string(),
        "--upstream",
        &registry.url(),
        "--listen-tls-cert",
        pki.join("gw.pem").to_str().unwrap(),
        "--listen-tls-key",
        pki.join("gw.key").to_str().unwrap(),
    ]);
    let _gw = spawn_customs(dir, "gateway", &args);
    wait_for_port(addr, Duration::from_secs(30));
    // Plain HTTP gets no answer from the HTTPS listener.
    let plain = std::panic::catch_unwind(|| http_get_text(&format!("http://{addr}/v2/")));
    assert!(
        plain.map_or(true, |b| !b.contains('{')),
        "the HTTPS listener answered plain HTTP"
    );
    // An enforcing node config: a (down) local peer, then the gateway.
    let dead_peer = format!("http://127.0.0.1:{}", free_port());
    let gateway = format!("https://{addr}");
    let hosts_config = |out: &Path, ca: bool| {
        let out_s = out.display().to_string();
        let ca_s = pki.join("ca.pem").display().to_string();
        let mut a = vec![
            "containerd-config",
            "--mirror",
            &dead_peer,
            "--gateway",
            &gateway,
            "--out",
            &out_s,
        ];
        let reg = registry.addr.to_string();
        a.extend(["--registry", &reg]);
        if ca {
            a.extend(["--ca", &ca_s]);
        }
        run_ok(Command::new(env!("CARGO_BIN_EXE_customs")).args(&a));
    };
    let with_ca = dir.join("hosts-ca");
    let without_ca = dir.join("hosts-plain");
    hosts_config(&with_ca, true);
    hosts_config(&without_ca, false);
    let toml = std::fs::read_to_string(with_ca.join(registry.addr.to_string()).join("hosts.toml"))
        .unwrap();
    let ca_abs = std::fs::canonicalize(pki.join("ca.pem")).unwrap();
    assert!(
        toml.contains(&format!("ca = \"{}\"", ca_abs.display())),
        "{toml}"
    );
    let ctrd = containerd::Containerd::start(&dir.join("containerd"));
    let image = format!("{}/team/app:v1", registry.addr);
    let (ok, out) = ctrd.pull("untrusting", &without_ca, &image);
    assert!(
        !ok,
        "containerd pulled from a gateway it cannot authenticate: {out}"
    );
    let (ok, out) = ctrd.pull("trusting", &with_ca, &image);
    assert!(
        ok,
        "containerd could not pull over HTTPS with the ca entry: {out}"
    );
}
