#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! Audit export to real receivers: rsyslog (the Debian package) on a
//! loopback TCP port, through an outage (receiver stopped while events are
//! produced, restarted: every event arrives, none twice after
//! de-duplication by sequence number); and a Splunk HEC-style HTTP receiver
//! that refuses for a while, then accepts.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// A private rsyslogd writing RFC 5424 lines to `dir/received.log`.
fn rsyslogd(dir: &Path, port: u16) -> Proc {
    require("rsyslogd");
    std::fs::create_dir_all(dir).unwrap();
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{d}\")\nmodule(load=\"imtcp\")\ninput(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n*.* action(type=\"omfile\" file=\"{d}/received.log\" template=\"RSYSLOG_SyslogProtocol23Format\")\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new("rsyslogd")
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("rsyslogd.pid"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("rsyslogd.err")).unwrap())
        .spawn()
        .unwrap();
    wait_for_port(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(10),
    );
    Proc {
        child,
        name: "rsyslogd".into(),
    }
}

/// Every `seq` in the local audit log.
fn local_seqs(log: &Path) -> BTreeSet<u64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["seq"].as_u64())
        .collect()
}

/// `seq` → how many times it arrived at rsyslog.
fn received_seqs(file: &Path) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for l in std::fs::read_to_string(file).unwrap_or_default().lines() {
        if let Some(rest) = l.split("[customs@32473 seq=\"").nth(1)
            && let Some(n) = rest.split('"').next().and_then(|n| n.parse().ok())
        {
            *out.entry(n).or_insert(0) += 1;
        }
    }
    out
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn rsyslog_receives_every_event_across_an_outage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    for i in 0..4u64 {
        make_image(
            &dir.join("layout"),
            &format!("v{i}"),
            &[10_000],
            &[],
            50 + i,
        );
        push(
            &dir.join("layout"),
            &format!("v{i}"),
            registry.addr,
            &format!("team/app{i}"),
        );
    }
    let port = free_port();
    let syslog_dir = dir.join("rsyslog");
    let mut receiver = rsyslogd(&syslog_dir, port);
    let target = format!("tcp://127.0.0.1:{port}");
    let gw = Customs::up(
        &dir.join("gw"),
        &registry.url(),
        &["--audit-syslog", &target],
    );
    let log = dir.join("gw/audit/audit.jsonl");
    let received = syslog_dir.join("received.log");
    let pull = |i: u64| {
        let (ok, err) = skopeo_pull(
            &format!("{}/team/app{i}:v{i}", gw.addr),
            &dir.join(format!("out{i}")),
        );
        assert!(ok, "{err}");
    };
    pull(0);
    wait_until(
        "the first decision at rsyslog",
        Duration::from_secs(20),
        || {
            let want = local_seqs(&log);
            !want.is_empty()
                && want
                    .iter()
                    .all(|s| received_seqs(&received).contains_key(s))
        },
    );

    // The SIEM goes down; events keep being produced (and are durable locally).
    receiver.terminate();
    pull(1);
    pull(2);
    std::thread::sleep(Duration::from_millis(1500));
    let _receiver = rsyslogd(&syslog_dir, port);
    pull(3);
    wait_until(
        "every event at rsyslog after the outage",
        Duration::from_secs(60),
        || {
            let got = received_seqs(&received);
            local_seqs(&log).iter().all(|s| got.contains_key(s))
        },
    );
    let want = local_seqs(&log);
    let got = received_seqs(&received);
    let dedup: BTreeSet<u64> = got.keys().copied().filter(|s| want.contains(s)).collect();
    assert_eq!(
        dedup, want,
        "after de-duplication by seq, exactly the local events"
    );
    assert!(
        std::fs::read_to_string(&received)
            .unwrap()
            .contains("team/app2"),
        "an event produced during the outage arrived"
    );
}

#[test]
fn hec_receiver_gets_every_event_after_refusing_for_a_while() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    for i in 0..2u64 {
        make_image(
            &dir.join("layout"),
            &format!("v{i}"),
            &[10_000],
            &[],
            60 + i,
        );
        push(
            &dir.join("layout"),
            &format!("v{i}"),
            registry.addr,
            &format!("team/hec{i}"),
        );
    }
    // An HTTP receiver in the HEC shape: `Authorization: Splunk TOKEN`,
    // a body of concatenated {"event": …} objects; 503 while "down".
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = free_port();
    {
        let seen = seen.clone();
        let up = up.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    "/services/collector/event",
                    axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                        let seen = seen.clone();
                        let up = up.clone();
                        async move {
                            if headers.get("authorization").and_then(|v| v.to_str().ok())
                                != Some("Splunk hec-token")
                            {
                                return axum::http::StatusCode::UNAUTHORIZED;
                            }
                            if !up.load(std::sync::atomic::Ordering::SeqCst) {
                                return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                            }
                            let stream = serde_json::Deserializer::from_str(&body)
                                .into_iter::<serde_json::Value>();
                            for v in stream {
                                seen.lock().unwrap().push(v.unwrap());
                            }
                            axum::http::StatusCode::OK
                        }
                    }),
                );
                let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .unwrap();
                axum::serve(l, app).await.unwrap();
            });
        });
    }
    wait_for_port(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(10),
    );
    let url = format!("http://127.0.0.1:{port}/services/collector/event");
    let api = format!("127.0.0.1:{}", free_port());
    let gw = Customs::up(
        &dir.join("gw"),
        &registry.url(),
        &[
            "--audit-hec",
            &url,
            "--audit-hec-token",
            "hec-token",
            "--api-listen",
            &api,
            "--api-token",
            "api-token",
        ],
    );
    // The export lag of the gateway's log, from /metrics.
    let lag = || -> u64 {
        let text = http_get_text(&format!("http://{api}/metrics"));
        metric_value(
            &text,
            "customs_audit_export_lag_bytes",
            &[("sink", "hec"), ("log", "audit.jsonl")],
        )
        .unwrap_or_else(|| panic!("no export lag gauge: {text}")) as u64
    };
    for i in 0..2u64 {
        let (ok, err) = skopeo_pull(
            &format!("{}/team/hec{i}:v{i}", gw.addr),
            &dir.join(format!("o{i}")),
        );
        assert!(ok, "{err}");
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing is accepted while the receiver refuses"
    );
    assert!(lag() > 0, "the undelivered events show as export lag");
    assert!(
        !gw.log_text().contains("hec-token"),
        "the HEC token is never logged"
    );
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    let log = dir.join("gw/audit/audit.jsonl");
    wait_until(
        "every event at the HEC receiver",
        Duration::from_secs(60),
        || {
            let got: BTreeSet<u64> = seen
                .lock()
                .unwrap()
                .iter()
                .filter_map(|v| v["event"]["seq"].as_u64())
                .collect();
            let want = local_seqs(&log);
            !want.is_empty() && want.iter().all(|s| got.contains(s))
        },
    );
    wait_until("no export lag", Duration::from_secs(20), || lag() == 0);
    let events = seen.lock().unwrap();
    assert!(events.iter().all(|v| v["sourcetype"] == "customs:audit"));
    assert!(events.iter().any(|v| v["event"]["kind"] == "decision"));
}
