//! Operating Customs: graceful shutdown of every component on SIGTERM
//! (in-flight transfers drain up to `--drain-secs`, the final audit
//! checkpoint is written, the exit status is 0).
#![allow(clippy::unwrap_used)]

mod support;

use sha2::Digest as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use support::*;

/// The biggest blob of an OCI layout (its one layer): (digest, size).
fn biggest_blob(layout: &Path) -> (String, u64) {
    layout_blobs(layout)
        .into_iter()
        .map(|d| {
            let size = std::fs::metadata(
                layout
                    .join("blobs/sha256")
                    .join(d.trim_start_matches("sha256:")),
            )
            .unwrap()
            .len();
            (d, size)
        })
        .max_by_key(|(_, s)| *s)
        .unwrap()
}

fn sigterm(pid: u32) {
    run_ok(std::process::Command::new("kill").args(["-TERM", &pid.to_string()]));
}

/// Waits for `proc` to exit (at most `limit`); its status and how long it took.
fn wait_exit(proc: &mut Proc, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(s) = proc.child.try_wait().unwrap() {
            return (s, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "{} still running {limit:?} after SIGTERM",
            proc.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True once connecting to `addr` is refused (within `limit`).
fn refuses_connections(addr: SocketAddr, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The `kind` of the last line of an audit log.
fn last_kind(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    last["kind"].as_str().unwrap().to_owned()
}

fn audit_verifies(data: &Path, key: Option<&Path>) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_customs"));
    cmd.args(["audit", "verify", "--data-dir"]).arg(data);
    if let Some(k) = key {
        cmd.arg("--key").arg(k);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Reads a response body to the end: (sha256 of what arrived, bytes, whether
/// it ended cleanly).
async fn read_body(mut resp: reqwest::Response, mut got: Vec<u8>) -> (String, u64, bool) {
    let mut h = sha2::Sha256::new();
    h.update(&got);
    let mut n = got.len() as u64;
    got.clear();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                n += c.len() as u64;
                h.update(&c);
            }
            Ok(None) => return (format!("sha256:{}", hex::encode(h.finalize())), n, true),
            Err(_) => return (format!("sha256:{}", hex::encode(h.finalize())), n, false),
        }
    }
}

/// Resolves `repo:v1` at `base` as a runtime would (blobs are served only
/// for an admitted manifest), starts the download of blob `digest` and
/// returns once its first bytes are in.
async fn start_download(
    base: &str,
    repo: &str,
    digest: &str,
    ns: &str,
) -> (reqwest::Response, Vec<u8>) {
    let http = reqwest::Client::new();
    let m = http
        .get(format!("{base}/v2/{repo}/manifests/v1{ns}"))
        .header(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json",
        )
        .send()
        .await
        .unwrap();
    assert!(m.status().is_success(), "manifest: {}", m.status());
    let url = format!("{base}/v2/{repo}/blobs/{digest}{ns}");
    let mut resp = http.get(&url).send().await.unwrap();
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    let first = resp.chunk().await.unwrap().unwrap().to_vec();
    (resp, first)
}

/// `customs gateway` on `registry` with its data under `dir/gw`, sending
/// at 1 MB/s and draining for `drain_secs` after SIGTERM.
fn slow_gateway(dir: &Path, registry: &Registry, drain_secs: &str) -> Customs {
    let data = dir.join("gw");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    Customs::spawn(
        &strings(&[
            "gateway",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &addr.to_string(),
            "--upstream",
            &registry.url(),
            "--upload-limit",
            "1000000",
            "--drain-secs",
            drain_secs,
        ]),
        addr,
        &data,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_gateway_transfer_then_checkpoints_and_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    // 3 MB at 1 MB/s: the transfer is in flight for about 3 s.
    make_image(&dir.join("app"), "v1", &[3_000_000], &[], 7);
    push(&dir.join("app"), "v1", registry.addr, "drain/app");
    let (digest, size) = biggest_blob(&dir.join("app"));
    let mut gw = slow_gateway(dir, &registry, "20");
    let (addr, data) = (gw.addr, gw.data_dir.clone());
    let (resp, first) = start_download(&format!("http://{addr}"), "drain/app", &digest, "").await;
    let began = Instant::now();
    sigterm(gw.proc.child.id());
    // No new connection is accepted once draining began...
    assert!(
        refuses_connections(addr, Duration::from_secs(3)),
        "the gateway still accepted connections while draining"
    );
    // ...but the one in flight is served to the end, whole and verified.
    let (got, n, clean) = read_body(resp, first).await;
    assert!(clean, "the transfer was cut after {n} of {size} bytes");
    assert_eq!((got.as_str(), n), (digest.as_str(), size));
    let (status, _) = wait_exit(&mut gw.proc, Duration::from_secs(20));
    assert!(status.success(), "exit {status}: {}", gw.log_text());
    assert!(
        began.elapsed() >= Duration::from_millis(1500),
        "exited before the transfer could have drained"
    );
    assert_eq!(last_kind(&data.join("audit/audit.jsonl")), "checkpoint");
    let (ok, out) = audit_verifies(&data, None);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_longer_than_drain_secs_is_cut_at_the_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    // 8 MB at 1 MB/s: far longer than the 1 s drain.
    make_image(&dir.join("app"), "v1", &[8_000_000], &[], 8);
    push(&dir.join("app"), "v1", registry.addr, "drain/big");
    let (digest, size) = biggest_blob(&dir.join("app"));
    let mut gw = slow_gateway(dir, &registry, "1");
    let (addr, data) = (gw.addr, gw.data_dir.clone());
    let (resp, first) = start_download(&format!("http://{addr}"), "drain/big", &digest, "").await;
    sigterm(gw.proc.child.id());
    let (status, took) = wait_exit(&mut gw.proc, Duration::from_secs(8));
    assert!(status.success(), "exit {status}: {}", gw.log_text());
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} with --drain-secs 1"
    );
    let (_, n, clean) = read_body(resp, first).await;
    assert!(
        !clean && n < size,
        "a cut transfer read as whole ({n} of {size})"
    );
    assert_eq!(last_kind(&data.join("audit/audit.jsonl")), "checkpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_component_drains_on_sigterm_and_exits_0() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    make_image(&dir.join("app"), "v1", &[3_000_000], &[], 9);
    push(&dir.join("app"), "v1", registry.addr, "drain/swarm");
    let (digest, size) = biggest_blob(&dir.join("app"));
    let drain = strings(&["--drain-secs", "20"]);
    let mut fleet = Standalone::start(
        dir,
        &registry,
        1,
        &[strings(&["--upload-limit", "1000000"]), drain.clone()].concat(),
        &drain,
    );
    // A node's peer is replaced (a DaemonSet rollout) while containerd pulls
    // through it: the pull completes, the peer exits 0.
    let peer_addr: SocketAddr = fleet.peer_addrs[0].parse().unwrap();
    let (resp, first) = start_download(
        &format!("http://{peer_addr}"),
        "drain/swarm",
        &digest,
        &format!("?ns={}", registry.addr),
    )
    .await;
    sigterm(fleet.peers[0].child.id());
    assert!(
        refuses_connections(peer_addr, Duration::from_secs(3)),
        "the peer still accepted connections while draining"
    );
    let (got, n, clean) = read_body(resp, first).await;
    assert!(clean, "the peer cut its transfer after {n} of {size} bytes");
    assert_eq!((got.as_str(), n), (digest.as_str(), size));
    let (status, _) = wait_exit(&mut fleet.peers[0], Duration::from_secs(20));
    assert!(status.success(), "peer exit {status}");
    // The scheduler and the gateway, with nothing in flight, stop at once.
    for p in [&mut fleet.scheduler, &mut fleet.gateway] {
        sigterm(p.child.id());
        let (status, took) = wait_exit(p, Duration::from_secs(20));
        assert!(status.success(), "{} exit {status}", p.name);
        assert!(took < Duration::from_secs(5), "{} took {took:?}", p.name);
    }
    assert_eq!(last_kind(&dir.join("gw/audit/audit.jsonl")), "checkpoint");
    let (ok, out) = audit_verifies(&dir.join("gw"), Some(&dir.join("gw/key.pub")));
    assert!(ok, "{out}");
}

/// A small OTLP/gRPC trace receiver on the published protobufs (what an
/// OpenTelemetry collector's `otlp` receiver accepts): every exported span
/// with its resource's `service.name`.
mod otlp_receiver {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
        TraceService, TraceServiceServer,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use std::sync::{Arc, Mutex};

    /// One received span.
    #[derive(Debug, Clone)]
    pub struct Span {
        pub service: String,
        pub instance: String,
        pub name: String,
        pub kind: i32,
        pub trace_id: Vec<u8>,
        pub span_id: Vec<u8>,
        pub parent_span_id: Vec<u8>,
    }

    #[derive(Default, Clone)]
    pub struct Receiver(Arc<Mutex<Vec<Span>>>);

    fn attr(attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> String {
        attrs
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.clone())
            .map(|v| match v {
                Value::StringValue(s) => s,
                other => format!("{other:?}"),
            })
            .unwrap_or_default()
    }

    #[tonic::async_trait]
    impl TraceService for Receiver {
        async fn export(
            &self,
            req: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut spans = self.0.lock().unwrap();
            for rs in req.into_inner().resource_spans {
                let attrs = rs.resource.map(|r| r.attributes).unwrap_or_default();
                let (service, instance) = (
                    attr(&attrs, "service.name"),
                    attr(&attrs, "service.instance.id"),
                );
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        spans.push(Span {
                            service: service.clone(),
                            instance: instance.clone(),
                            name: s.name,
                            kind: s.kind,
                            trace_id: s.trace_id,
                            span_id: s.span_id,
                            parent_span_id: s.parent_span_id,
                        });
                    }
                }
            }
            Ok(tonic::Response::new(ExportTraceServiceResponse {
                partial_success: None,
            }))
        }
    }

    impl Receiver {
        /// Serves on a loopback port; returns the receiver and its endpoint.
        pub async fn start() -> (Receiver, String) {
            let r = Receiver::default();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let svc = TraceServiceServer::new(r.clone());
            tokio::spawn(async move {
                let incoming = futures_util::stream::unfold(listener, |l| async move {
                    let conn = l.accept().await.map(|(s, _)| s);
                    Some((conn, l))
                });
                tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming(incoming)
                    .await
                    .unwrap();
            });
            (r, format!("http://{addr}"))
        }

        pub fn spans(&self) -> Vec<Span> {
            self.0.lock().unwrap().clone()
        }
    }
}

/// SPAN_KIND_SERVER and SPAN_KIND_CLIENT in the OTLP protobuf.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cold_pull_is_one_trace_across_peer_gateway_and_upstream() {
    let (receiver, endpoint) = otlp_receiver::Receiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    make_image(&dir.join("app"), "v1", &[200_000], &[], 10);
    push(&dir.join("app"), "v1", registry.addr, "traced/app");
    let (digest, _) = biggest_blob(&dir.join("app"));
    let gw_data = dir.join("gw");
    let gw_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut gw = Customs::spawn(
        &strings(&[
            "gateway",
            "--data-dir",
            gw_data.to_str().unwrap(),
            "--listen",
            &gw_addr.to_string(),
            "--upstream",
            &registry.url(),
            "--gateway-id",
            "gw-a",
            "--otlp-endpoint",
            &endpoint,
        ]),
        gw_addr,
        &gw_data,
    );
    let peer_data = dir.join("peer");
    let peer_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut peer = Customs::spawn(
        &strings(&[
            "peer",
            "--gateway",
            &format!("http://{gw_addr}"),
            "--listen",
            &peer_addr.to_string(),
            "--data-dir",
            peer_data.to_str().unwrap(),
            "--default-registry",
            &registry.addr.to_string(),
            "--peer-id",
            "node-7",
            "--otlp-endpoint",
            &endpoint,
        ]),
        peer_addr,
        &peer_data,
    );
    let (resp, first) =
        start_download(&format!("http://{peer_addr}"), "traced/app", &digest, "").await;
    let (got, _, clean) = read_body(resp, first).await;
    assert!(clean && got == digest);
    // Spans are batched: a clean stop flushes them.
    for p in [&mut peer.proc, &mut gw.proc] {
        sigterm(p.child.id());
        assert!(wait_exit(p, Duration::from_secs(20)).0.success());
    }
    let spans = receiver.spans();
    let of = |service: &str| -> Vec<&otlp_receiver::Span> {
        spans.iter().filter(|s| s.service == service).collect()
    };
    let (peer_spans, gw_spans) = (of("customs-peer"), of("customs-gateway"));
    assert!(
        peer_spans.iter().all(|s| s.instance == "node-7")
            && gw_spans.iter().all(|s| s.instance == "gw-a"),
        "resources name the node: {spans:#?}"
    );
    // The blob request containerd made to the peer...
    let pull = peer_spans
        .iter()
        .find(|s| s.kind == SERVER && s.name == "GET blob")
        .unwrap_or_else(|| {
            panic!(
                "no peer blob span: {spans:#?}\npeer log:\n{}\ngateway log:\n{}",
                peer.log_text(),
                gw.log_text()
            )
        });
    let trace: Vec<&otlp_receiver::Span> = spans
        .iter()
        .filter(|s| s.trace_id == pull.trace_id)
        .collect();
    // ...called the gateway (a client span of the peer)...
    let call = trace
        .iter()
        .find(|s| s.service == "customs-peer" && s.kind == CLIENT && s.name == "gateway")
        .unwrap_or_else(|| panic!("no peer -> gateway call in the trace: {trace:#?}"));
    // ...whose server span on the gateway is its child...
    let served = trace
        .iter()
        .find(|s| {
            s.service == "customs-gateway" && s.kind == SERVER && s.parent_span_id == call.span_id
        })
        .unwrap_or_else(|| panic!("the gateway's span does not continue the peer's: {trace:#?}"));
    assert_eq!(served.name, "GET blob");
    // ...and the gateway's upstream fetch is in the same trace.
    assert!(
        trace
            .iter()
            .any(|s| s.service == "customs-gateway" && s.kind == CLIENT && s.name == "upstream"),
        "no upstream span in the trace: {trace:#?}"
    );
}

/// `customs <component> --print-config` with `file`, `env` and `flags`:
/// (exit 0?, stdout, stderr).
fn print_config(
    component: &str,
    file: &str,
    env: &[(&str, &str)],
    flags: &[&str],
) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, file).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_customs"))
        .arg(component)
        .arg("--config")
        .arg(&path)
        .args(flags)
        .arg("--print-config")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_precedence_is_defaults_then_file_then_env_then_flags() {
    let file = "upstream:\n  url: http://127.0.0.1:1\n  tag_ttl: 45s\npolicy:\n  poll: 20s\nswarm:\n  upload_limit: 100\naudit:\n  aggregate: 2m\n";
    let env = [
        ("CUSTOMS_GATEWAY__POLICY__POLL", "30s"),
        ("CUSTOMS_GATEWAY__SWARM__UPLOAD_LIMIT", "200"),
        ("CUSTOMS_API_TOKEN", "sekrit-token"),
    ];
    let (ok, out, err) = print_config("gateway", file, &env, &["--upload-limit", "300"]);
    assert!(ok, "{err}");
    let c: serde_json::Value = serde_json::from_str(&out).unwrap();
    // Default (untouched), file (not overridden), env over file, flag over env.
    assert_eq!(c["upstream"]["stale_window"], "6h");
    assert_eq!(c["upstream"]["tag_ttl"], "45s");
    assert_eq!(c["audit"]["aggregate"], "2m");
    assert_eq!(c["policy"]["poll"], "30s");
    assert_eq!(c["swarm"]["upload_limit"], 300);
    // A documented *-secs flag keeps its meaning, over the file.
    let (_, out, _) = print_config("gateway", file, &[], &["--policy-poll-secs", "7"]);
    let c: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(c["policy"]["poll"], "7s");
    // Secrets never print.
    let (_, out, _) = print_config("gateway", file, &env, &[]);
    assert!(
        !out.contains("sekrit") && out.contains("<redacted>"),
        "{out}"
    );
    // The peer's sections layer the same way.
    let (ok, out, err) = print_config(
        "peer",
        "gateway:\n  url: http://127.0.0.1:5050\npolicy:\n  admission_ttl: 45s\nswarm:\n  upload_slots: 3\n",
        &[("CUSTOMS_PEER__SWARM__UPLOAD_SLOTS", "5")],
        &["--admission-ttl", "1m"],
    );
    assert!(ok, "{err}");
    let c: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(c["policy"]["admission_ttl"], "1m");
    assert_eq!(c["swarm"]["upload_slots"], 5);
    assert_eq!(c["gateway"]["url"], "http://127.0.0.1:5050");
    // And the scheduler's.
    let (ok, out, err) = print_config(
        "scheduler",
        "listen: 127.0.0.1:6000\naudit:\n  log: /tmp/a.jsonl\n",
        &[("CUSTOMS_SCHEDULER__AUDIT__LOG", "/tmp/b.jsonl")],
        &["--listen", "127.0.0.1:6001"],
    );
    assert!(ok, "{err}");
    let c: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(c["listen"], "127.0.0.1:6001");
    assert_eq!(c["audit"]["log"], "/tmp/b.jsonl");
}

#[test]
fn bad_config_is_a_clear_error_naming_the_key() {
    let base = "upstream:\n  url: http://127.0.0.1:1\n";
    for (file, env, want) in [
        (
            format!("{base}policy:\n  pol: 3s\n"),
            vec![],
            "unknown field: found `pol`",
        ),
        (format!("{base}polcy: {{}}\n"), vec![], "polcy"),
        (
            format!("{base}policy:\n  poll: soon\n"),
            vec![],
            "policy.poll",
        ),
        (
            format!("{base}audit:\n  format: xml\n"),
            vec![],
            "audit.format",
        ),
        (
            base.to_owned(),
            vec![("CUSTOMS_GATEWAY__POLICY__POLL", "never")],
            "POLICY.POLL",
        ),
    ] {
        let (ok, _, err) = print_config("gateway", &file, &env, &[]);
        assert!(!ok, "{file:?} was accepted");
        assert!(err.contains(want), "{file:?}: {err}");
    }
    // Out of range: refused when the component starts, naming the key.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, format!("{base}policy:\n  poll: 2h\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_customs"))
        .args(["gateway", "--data-dir"])
        .arg(dir.path().join("gw"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("policy.poll is 2h: it must be between 1s and 1h"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_pull_traces_the_scheduler_registration_too() {
    let (receiver, endpoint) = otlp_receiver::Receiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    make_image(&dir.join("app"), "v1", &[300_000], &[], 11);
    push(&dir.join("app"), "v1", registry.addr, "traced/swarm");
    let (digest, _) = biggest_blob(&dir.join("app"));
    let otlp = strings(&["--otlp-endpoint", &endpoint]);
    let mut fleet = Standalone::start_with(dir, &registry, 1, &otlp, &otlp, &otlp);
    let peer_addr: SocketAddr = fleet.peer_addrs[0].parse().unwrap();
    let (resp, first) = start_download(
        &format!("http://{peer_addr}"),
        "traced/swarm",
        &digest,
        &format!("?ns={}", registry.addr),
    )
    .await;
    let (got, _, clean) = read_body(resp, first).await;
    assert!(clean && got == digest);
    for p in [
        &mut fleet.peers[0],
        &mut fleet.scheduler,
        &mut fleet.gateway,
    ] {
        sigterm(p.child.id());
        assert!(wait_exit(p, Duration::from_secs(30)).0.success());
    }
    let spans = receiver.spans();
    // The scheduler's span of the final registration continues a trace
    // that a peer's request to the gateway started, with the swarm
    // download in it.
    let registered = spans
        .iter()
        .find(|s| s.service == "customs-scheduler" && s.name == "RegisterTask" && s.kind == SERVER)
        .unwrap_or_else(|| panic!("no scheduler span: {spans:#?}"));
    let trace: Vec<&otlp_receiver::Span> = spans
        .iter()
        .filter(|s| s.trace_id == registered.trace_id)
        .collect();
    assert!(
        trace.iter().any(|s| s.service == "customs-gateway"
            && s.kind == CLIENT
            && s.name == "scheduler"
            && s.span_id == registered.parent_span_id),
        "the registration's parent is not the gateway's call: {trace:#?}"
    );
    assert!(
        trace
            .iter()
            .any(|s| s.service == "customs-gateway" && s.kind == SERVER),
        "no gateway request in the trace: {trace:#?}"
    );
    assert!(
        spans
            .iter()
            .any(|s| s.service == "customs-peer" && s.name == "swarm download"),
        "no swarm download span: {spans:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customs_up_passes_the_collector_and_the_drain_deadline_to_its_peers() {
    let (receiver, endpoint) = otlp_receiver::Receiver::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    make_image(&dir.join("app"), "v1", &[100_000], &[], 12);
    push(&dir.join("app"), "v1", registry.addr, "traced/up");
    let (digest, _) = biggest_blob(&dir.join("app"));
    let mut up = Fleet::up(
        &dir.join("up"),
        &registry.url(),
        1,
        &["--otlp-endpoint", &endpoint, "--drain-secs", "7"],
    );
    let (resp, first) = start_download(
        &format!("http://{}", up.peers[0]),
        "traced/up",
        &digest,
        &format!("?ns={}", registry.addr),
    )
    .await;
    assert!(read_body(resp, first).await.2);
    assert!(
        up.gateway.proc.terminate().success(),
        "{}",
        up.gateway.log_text()
    );
    let spans = receiver.spans();
    for service in ["customs-gateway", "customs-peer"] {
        assert!(
            spans.iter().any(|s| s.service == service),
            "nothing from {service}: {spans:#?}"
        );
    }
    assert!(
        spans
            .iter()
            .any(|s| s.service == "customs-peer" && s.instance == "peer-1"),
        "the peer's resource does not name its node: {spans:#?}"
    );
    // The peer got the drain deadline too (it logs it on SIGTERM).
    let peer_log = std::fs::read_to_string(dir.join("up/peer-1.log")).unwrap();
    assert!(peer_log.contains("drain_secs=7"), "{peer_log}");
}
