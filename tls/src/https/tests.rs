//! Real rustls connections on loopback: role checks by clients, bounded
//! listeners.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::{
    CertRequest, ExtraName, ListenerLimits, RefusedConnections, Role, TlsIdentity, TlsPaths,
    serving_config, tls_incoming, write_dev_pki, write_pki,
};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pki() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_dev_pki(
        dir.path(),
        &[
            ("gateway", Role::Gateway),
            ("scheduler", Role::Scheduler),
            ("peer-1", Role::Peer),
            // A hostile node holding a genuine peer certificate whose id is
            // a role's name.
            ("gateway-imp", Role::Peer),
        ],
    )
    .unwrap();
    dir
}

fn id(dir: &Path, name: &str) -> TlsIdentity {
    TlsIdentity::load(&TlsPaths::in_dir(dir, name)).unwrap()
}

fn app() -> Router {
    Router::new().route("/v2/", axum::routing::get(|| async { "{}" }))
}

/// Serves `app()` over mTLS as `name`; returns its address.
async fn server_as(
    dir: &Path,
    name: &str,
    limits: ListenerLimits,
) -> (std::net::SocketAddr, Arc<RefusedConnections>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused: Arc<RefusedConnections> = Arc::default();
    tokio::spawn(serve_tls_with(
        listener,
        id(dir, name).server_config().unwrap(),
        app(),
        refused.clone(),
        limits,
        CancellationToken::new(),
    ));
    (addr, refused)
}

fn client(dir: &Path, name: &str, roles: &[Role]) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(id(dir, name).client_config_for_any(roles).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_gateway_asked_by_name_must_hold_that_name() {
    let tmp = pki();
    let dir = tmp.path();
    write_dev_pki(dir, &[("gw-b", Role::Gateway)]).unwrap();
    // Gateway `gw-b` listens here; the fleet store claims it is `gw-c`
    // (or `gateway`): a client asking for that member is refused.
    let (b, _) = server_as(dir, "gw-b", ListenerLimits::default()).await;
    let url = format!("https://{b}/v2/");
    let asking_for = |who: &str| {
        reqwest::Client::builder()
            .use_preconfigured_tls(
                id(dir, "gateway")
                    .client_config_for_named(Role::Gateway, who)
                    .unwrap(),
            )
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    };
    assert_eq!(
        asking_for("gw-b").get(&url).send().await.unwrap().status(),
        200
    );
    for wrong in ["gw-c", "gateway"] {
        asking_for(wrong)
            .get(&url)
            .send()
            .await
            .expect_err("a gateway answered under another member's name");
    }
    // A peer certificate named like the member is not a gateway.
    write_dev_pki(dir, &[("gw-d", Role::Peer)]).unwrap();
    let (d, _) = server_as(dir, "gw-d", ListenerLimits::default()).await;
    asking_for("gw-d")
        .get(format!("https://{d}/v2/"))
        .send()
        .await
        .expect_err("a peer certificate passed as a named gateway");
}

#[tokio::test]
async fn a_peer_certificate_cannot_pose_as_the_gateway_or_the_scheduler() {
    let tmp = pki();
    let dir = tmp.path();
    // A hostile server with a genuine peer certificate, reached at the
    // address the client was told is the gateway's.
    let (hostile, _) = server_as(dir, "peer-1", ListenerLimits::default()).await;
    let url = format!("https://{hostile}/v2/");
    for expected in [Role::Gateway, Role::Scheduler] {
        let err = client(dir, "peer-1", &[expected])
            .get(&url)
            .send()
            .await
            .expect_err("a peer certificate passed as another role");
        let chain = format!("{:?}", err);
        assert!(
            chain.contains("NotValidForName"),
            "refused for the wrong reason: {chain}"
        );
    }
    // The same server is accepted where a peer is expected (a piece parent),
    // whatever host the URL names: the role is what is checked.
    let ok = client(dir, "gateway", &[Role::Peer]);
    assert_eq!(ok.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(
        ok.get(format!("https://localhost:{}/v2/", hostile.port()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // A peer whose id is a role's name is still only a peer.
    let (imp, _) = server_as(dir, "gateway-imp", ListenerLimits::default()).await;
    assert!(
        client(dir, "peer-1", &[Role::Gateway])
            .get(format!("https://{imp}/v2/"))
            .send()
            .await
            .is_err()
    );
    // The real gateway passes as the gateway, and as a piece parent (seed).
    let (gw, _) = server_as(dir, "gateway", ListenerLimits::default()).await;
    for roles in [&[Role::Gateway][..], &[Role::Peer, Role::Gateway][..]] {
        let r = client(dir, "peer-1", roles)
            .get(format!("https://{gw}/v2/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test]
async fn a_peer_certificate_cannot_pose_as_the_scheduler_to_tonic() {
    let tmp = pki();
    let dir = tmp.path();
    let grpc_server = |name: &str| {
        let cfg = id(dir, name).grpc_server_config().unwrap();
        async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let incoming = tls_incoming(
                listener,
                cfg,
                ListenerLimits::default(),
                Arc::default(),
                CancellationToken::new(),
            );
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_routes(tonic::service::Routes::default())
                    .serve_with_incoming_shutdown(incoming, std::future::pending()),
            );
            addr
        }
    };
    let connect = |addr: std::net::SocketAddr| {
        let tls = id(dir, "peer-1").tonic_client_for(Role::Scheduler);
        async move {
            tonic::transport::Channel::from_shared(format!("https://{addr}"))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
        }
    };
    let hostile = grpc_server("peer-1").await;
    assert!(
        connect(hostile).await.is_err(),
        "a peer certificate passed as the scheduler"
    );
    let real = grpc_server("scheduler").await;
    connect(real).await.unwrap();
}

/// True when the server closed `s` (EOF or reset) within `within`.
async fn closed_by_server(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        // A TLS alert may come first; the close follows.
        Ok(Ok(_)) => matches!(
            tokio::time::timeout(within, s.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        ),
        Err(_) => false,
    }
}

#[tokio::test]
async fn idle_connections_are_closed_at_the_handshake_timeout() {
    let tmp = pki();
    let dir = tmp.path();
    let limits = ListenerLimits {
        handshake_timeout: Duration::from_millis(400),
        ..ListenerLimits::default()
    };
    let (addr, refused) = server_as(dir, "peer-1", limits).await;
    // 300 connections that never start a handshake.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let start = Instant::now();
    for s in &mut idle {
        assert!(
            closed_by_server(s, Duration::from_secs(5)).await,
            "an idle connection outlived the handshake timeout"
        );
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    // Every one was counted (the last close may race the counter).
    let deadline = Instant::now() + Duration::from_secs(2);
    while refused.timed_out() < 300 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refused.timed_out(), 300);
    // The listener still serves honest clients.
    let ok = client(dir, "gateway", &[Role::Peer]);
    assert_eq!(
        ok.get(format!("https://{addr}/v2/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let tmp = pki();
    let dir = tmp.path();
    let limits = ListenerLimits {
        max_connections: 8,
        handshake_timeout: Duration::from_secs(60),
        ..ListenerLimits::default()
    };
    let (addr, refused) = server_as(dir, "peer-1", limits).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // Give the accept loop time to take all eight.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_by_server(&mut extra, Duration::from_secs(2)).await,
        "a connection over the cap was held"
    );
    assert_eq!(refused.over_cap(), 1);
    // The held ones are still open (within their handshake time).
    assert!(!closed_by_server(&mut held[0], Duration::from_millis(100)).await);
    // A freed slot is usable again.
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ok = client(dir, "gateway", &[Role::Peer]);
    assert_eq!(
        ok.get(format!("https://{addr}/v2/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn an_idle_connection_after_the_handshake_is_closed() {
    let tmp = pki();
    let dir = tmp.path();
    let limits = ListenerLimits {
        header_read_timeout: Duration::from_millis(400),
        ..ListenerLimits::default()
    };
    let (addr, _) = server_as(dir, "peer-1", limits).await;
    let cfg = id(dir, "gateway").client_config_for(Role::Peer).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("peer.customs.internal").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    // Handshake done, no request: the server hangs up.
    let mut buf = [0u8; 256];
    let r = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(_)) | Ok(Err(_))),
        "an idle TLS connection was held past the header read timeout"
    );
    // Nothing more comes: the connection is closed.
    let _ = tls.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let r = tokio::time::timeout(Duration::from_secs(2), tls.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))));
}

#[tokio::test]
async fn a_serving_certificate_serves_https_without_client_certificates() {
    let tmp = pki();
    let dir = tmp.path();
    write_pki(
        dir,
        &[CertRequest {
            id: "gw-public".into(),
            role: Role::Gateway,
            extra: vec![
                "registry.example".parse().unwrap(),
                "127.0.0.1".parse().unwrap(),
            ],
        }],
    )
    .unwrap();
    let cfg = serving_config(&dir.join("gw-public.pem"), &dir.join("gw-public.key")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve_tls(
        listener,
        cfg,
        app(),
        Arc::default(),
        CancellationToken::new(),
    ));
    // containerd's view: the CA file, no client certificate, the URL's host.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(dir.join("ca.pem")).unwrap()).unwrap();
    let plain = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let r = plain
        .get(format!("https://{addr}/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Extra names never add roles or identities, nor wildcards.
    for bad in [
        "peer.customs.internal",
        "x.node.customs.internal",
        "customs.internal",
        "*.example",
    ] {
        assert!(bad.parse::<ExtraName>().is_err(), "{bad} accepted");
    }
}

/// A client that requests an endless body and never reads it.
async fn stalled_reader(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    s
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_its_connection_at_the_write_stall_timeout() {
    // An endless response: only the server giving up can end it.
    let chunk = axum::body::Bytes::from(vec![0x42u8; 64 * 1024]);
    let endless = axum::routing::get(move || {
        let chunk = chunk.clone();
        async move {
            let s =
                futures_util::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
            axum::body::Body::from_stream(s)
        }
    });
    let serve = |limits: ListenerLimits| {
        let app = Router::new().route("/endless", endless.clone());
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(serve_http(
                listener,
                app,
                Arc::default(),
                limits,
                tokio_util::sync::CancellationToken::new(),
            ));
            addr
        }
    };
    let limits = ListenerLimits {
        write_stall_timeout: Duration::from_millis(300),
        max_connections: 4,
        ..ListenerLimits::default()
    };
    let addr = serve(limits).await;
    // Four clients fill the cap and stop reading.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(stalled_reader(addr).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Each was cut off: what is buffered drains, then the stream ends
    // (a server still writing would send forever).
    for s in &mut stalled {
        let mut got = 0usize;
        let mut buf = vec![0u8; 256 * 1024];
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(n) => got += n,
                }
                if got > 256 * 1024 * 1024 {
                    return false;
                }
            }
        })
        .await
        .unwrap_or(false);
        assert!(
            drained,
            "a stalled client kept its connection ({got} bytes)"
        );
    }
    // Their slots are free again: a new client is served.
    let mut fresh = stalled_reader(addr).await;
    let mut buf = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(5), fresh.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
    // With the timeout out of reach, a stalled client keeps its connection:
    // the check above is what the timeout does.
    let addr = serve(ListenerLimits {
        write_stall_timeout: Duration::from_secs(3600),
        ..ListenerLimits::default()
    })
    .await;
    let mut held = stalled_reader(addr).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!closed_by_server(&mut held, Duration::from_millis(300)).await);
}

/// A plain-HTTP server of one slow response: `chunks` chunks of 1 KiB,
/// one every 100 ms, until `shutdown`; returns its address and the task.
async fn slow_server(
    chunks: usize,
    limits: ListenerLimits,
    shutdown: CancellationToken,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let app = Router::new().route(
        "/slow",
        axum::routing::get(move || async move {
            let s = futures_util::stream::unfold(0usize, move |i| async move {
                if i == chunks {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                Some((Ok::<_, std::io::Error>(vec![b'x'; 1024]), i + 1))
            });
            axum::body::Body::from_stream(s)
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(serve_http(listener, app, Arc::default(), limits, shutdown));
    (addr, task)
}

#[tokio::test]
async fn shutdown_drains_the_response_in_flight_and_refuses_new_connections() {
    let shutdown = CancellationToken::new();
    let (addr, server) = slow_server(20, ListenerLimits::default(), shutdown.clone()).await;
    let mut resp = reqwest::get(format!("http://{addr}/slow")).await.unwrap();
    let mut got = resp.chunk().await.unwrap().unwrap().len();
    let began = Instant::now();
    shutdown.cancel();
    // The listener closes at once: a new connection is refused.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "a new connection was accepted after shutdown began"
    );
    // The response in flight still arrives whole.
    while let Some(c) = resp.chunk().await.unwrap() {
        got += c.len();
    }
    assert_eq!(got, 20 * 1024);
    // And the server returns once it was sent.
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(began.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_response_longer_than_the_drain_deadline_is_cut_at_it() {
    let shutdown = CancellationToken::new();
    let limits = ListenerLimits::default().with_drain(Duration::from_millis(500));
    // 600 chunks at 100 ms: a minute, far past the deadline.
    let (addr, server) = slow_server(600, limits, shutdown.clone()).await;
    let mut resp = reqwest::get(format!("http://{addr}/slow")).await.unwrap();
    resp.chunk().await.unwrap().unwrap();
    let began = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server outlived its drain deadline")
        .unwrap()
        .unwrap();
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "cut before the deadline: {took:?}"
    );
    // The client sees the body end early, as an error, not as a whole body.
    let mut cut = false;
    loop {
        match resp.chunk().await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "a cut-off body read as complete");
}
