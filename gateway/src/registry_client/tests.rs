use super::*;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap as AxHeaders, StatusCode as AxStatus};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

fn repo() -> Repository {
    "team/app".parse().unwrap()
}

fn short() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        first_byte: Duration::from_millis(500),
        idle_read: Duration::from_millis(500),
        body: Duration::from_millis(1500),
    }
}

async fn serve(app: axum::Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr.to_string()
}

fn client(host: &str, creds: Option<BasicCredentials>, t: Timeouts) -> RegistryClient {
    RegistryClient::new(
        format!("http://{host}"),
        host.to_owned(),
        creds,
        Vec::new(),
        t,
    )
    .unwrap()
}

#[test]
fn challenges_parse() {
    assert_eq!(
        parse_challenge_value(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#
        ),
        Some(Challenge::Bearer {
            realm: "https://auth.example/token".into(),
            service: Some("registry.example".into()),
        })
    );
    assert_eq!(
        parse_challenge_value(r#"bearer realm="http://x/t?a=1,b""#),
        Some(Challenge::Bearer {
            realm: "http://x/t?a=1,b".into(),
            service: None,
        })
    );
    assert_eq!(
        parse_challenge_value(r#"Basic realm="Registry Realm""#),
        Some(Challenge::Basic)
    );
    assert_eq!(parse_challenge_value("Bearer service=x"), None);
    assert_eq!(parse_challenge_value("Negotiate"), None);
    assert_eq!(parse_challenge_value(""), None);
}

#[derive(Default)]
struct Counts {
    tokens: AtomicUsize,
    manifests: AtomicUsize,
}

/// A registry with the distribution token flow: manifests need
/// `Bearer good`, the token service needs `puller:pw`.
async fn token_registry() -> (String, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let host = Arc::new(std::sync::OnceLock::<String>::new());
    let h2 = host.clone();
    let app = axum::Router::new()
        .route(
            "/v2/team/app/manifests/v1",
            get(move |State(c): State<Arc<Counts>>, headers: AxHeaders| {
                let host = h2.clone();
                async move {
                    c.manifests.fetch_add(1, Ordering::SeqCst);
                    let ok = headers
                        .get("authorization")
                        .is_some_and(|v| v == "Bearer good");
                    if ok {
                        return (AxStatus::OK, "{\"schemaVersion\":2}").into_response();
                    }
                    let realm = format!(
                        r#"Bearer realm="http://{}/token",service="test""#,
                        host.get().unwrap()
                    );
                    (AxStatus::UNAUTHORIZED, [("www-authenticate", realm)], "").into_response()
                }
            }),
        )
        .route(
            "/token",
            get(
                |State(c): State<Arc<Counts>>,
                 q: axum::extract::Query<HashMap<String, String>>,
                 headers: AxHeaders| async move {
                    c.tokens.fetch_add(1, Ordering::SeqCst);
                    let basic = headers
                        .get("authorization")
                        .is_some_and(|v| v == "Basic cHVsbGVyOnB3");
                    let scope_ok = q.get("scope").map(String::as_str)
                        == Some("repository:team/app:pull")
                        && q.get("service").map(String::as_str) == Some("test");
                    if basic && scope_ok {
                        (AxStatus::OK, r#"{"token":"good","expires_in":300}"#).into_response()
                    } else {
                        AxStatus::UNAUTHORIZED.into_response()
                    }
                },
            ),
        )
        .with_state(counts.clone());
    let addr = serve(app).await;
    host.set(addr.clone()).unwrap();
    (addr, counts)
}

#[tokio::test]
async fn bearer_tokens_are_fetched_with_credentials_and_cached() {
    let (host, counts) = token_registry().await;
    let creds = BasicCredentials {
        username: "puller".into(),
        password: "pw".into(),
    };
    let c = client(&host, Some(creds), short());
    for _ in 0..3 {
        let resp = c
            .get(&repo(), "/v2/team/app/manifests/v1", "*/*")
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = c.read_capped(resp, 1024, "manifest").await.unwrap();
        assert_eq!(&body[..], b"{\"schemaVersion\":2}");
    }
    assert_eq!(
        counts.tokens.load(Ordering::SeqCst),
        1,
        "the token is cached"
    );
    assert_eq!(
        counts.manifests.load(Ordering::SeqCst),
        4,
        "one 401, then three with the token"
    );

    // Without credentials the token service refuses: a clear Unauthorized.
    let anon = client(&host, None, short());
    let e = anon
        .get(&repo(), "/v2/team/app/manifests/v1", "*/*")
        .await
        .unwrap_err();
    assert_eq!(e.kind, FetchFailureKind::Unauthorized);
}

/// A body that never ends.
fn endless() -> Body {
    let chunk = Bytes::from(vec![b' '; 64 * 1024]);
    Body::from_stream(futures_util::stream::repeat_with(move || {
        Ok::<_, std::io::Error>(chunk.clone())
    }))
}

/// A body that sends `first`, then one byte every `every`, forever.
fn trickle(first: &'static [u8], every: Duration) -> Body {
    let head =
        futures_util::stream::once(
            async move { Ok::<_, std::io::Error>(Bytes::from_static(first)) },
        );
    let tail = futures_util::stream::unfold((), move |()| async move {
        tokio::time::sleep(every).await;
        Some((Ok(Bytes::from_static(b" ")), ()))
    });
    Body::from_stream(head.chain(tail))
}

/// A body that sends `first`, then nothing, forever.
fn stall(first: &'static [u8]) -> Body {
    let head =
        futures_util::stream::once(
            async move { Ok::<_, std::io::Error>(Bytes::from_static(first)) },
        );
    Body::from_stream(head.chain(futures_util::stream::pending()))
}

async fn hostile() -> String {
    let app = axum::Router::new()
        .route("/endless", get(|| async { Response::new(endless()) }))
        .route(
            "/declared",
            get(|| async { ([("content-length", "999999999")], Response::new(endless())) }),
        )
        .route(
            "/slow",
            get(|| async { Response::new(trickle(b"{", Duration::from_millis(100))) }),
        )
        .route("/stall", get(|| async { Response::new(stall(b"abc")) }))
        .route(
            "/silent",
            get(|| async {
                std::future::pending::<()>().await;
                ""
            }),
        );
    serve(app).await
}

#[tokio::test]
async fn an_endless_body_is_cut_off_at_the_cap() {
    let host = hostile().await;
    let c = client(&host, None, short());
    for path in ["/endless", "/declared"] {
        let resp = c.get(&repo(), path, "*/*").await.unwrap();
        let e = c
            .read_capped(resp, 4 * 1024 * 1024, "manifest")
            .await
            .unwrap_err();
        assert_eq!(e.kind, FetchFailureKind::Unavailable);
        assert!(
            e.message.contains("larger than the 4194304-byte limit"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn a_trickling_body_hits_the_body_timeout() {
    let host = hostile().await;
    let c = client(&host, None, short());
    let started = Instant::now();
    let resp = c.get(&repo(), "/slow", "*/*").await.unwrap();
    let e = c.read_capped(resp, 1024, "manifest").await.unwrap_err();
    assert!(e.message.contains("upstream body timeout"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_stalled_body_hits_the_idle_timeout() {
    let host = hostile().await;
    let c = client(&host, None, short());
    // Read into memory...
    let resp = c.get(&repo(), "/stall", "*/*").await.unwrap();
    let e = c.read_capped(resp, 1024, "manifest").await.unwrap_err();
    assert!(e.message.contains("upstream idle-read timeout"), "{e}");
    // ...and streamed: the stream fails instead of hanging.
    let resp = c.get(&repo(), "/stall", "*/*").await.unwrap();
    let mut s = c.idle_bounded_stream(resp);
    assert_eq!(&s.next().await.unwrap().unwrap()[..], b"abc");
    let e = tokio::time::timeout(Duration::from_secs(3), s.next())
        .await
        .expect("the stream hung")
        .unwrap()
        .unwrap_err();
    assert!(e.to_string().contains("upstream idle-read timeout"), "{e}");
    assert!(s.next().await.is_none(), "the stream ends after its error");
}

#[tokio::test]
async fn a_silent_upstream_hits_the_first_byte_timeout() {
    let host = hostile().await;
    let c = client(&host, None, short());
    let started = Instant::now();
    let e = c.get(&repo(), "/silent", "*/*").await.unwrap_err();
    assert_eq!(e.kind, FetchFailureKind::Unavailable);
    assert!(e.message.contains("upstream first-byte timeout"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));
}
