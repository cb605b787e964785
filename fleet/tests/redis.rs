#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test
//! The fleet store against a real `redis-server`: membership with TTLs,
//! jobs, a hostile Redis and a Redis that is gone.

use customs_fleet::member::spawn_heartbeat;
use customs_fleet::{Fleet, FleetError, FleetUrl, Member, MemberRole};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Redis {
    child: Child,
    port: u16,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis() -> Redis {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (apt install redis-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Redis { child, port }
}

fn cli(port: u16, args: &[&str]) {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .stdin(std::process::Stdio::null())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn member(id: &str, role: MemberRole) -> Member {
    Member {
        id: id.parse().unwrap(),
        role,
        endpoints: [("oci".to_owned(), format!("http://{id}"))].into(),
        zone: String::new(),
        expires_at: 0,
    }
}

async fn connect(port: u16) -> Fleet {
    let url: FleetUrl = format!("redis://127.0.0.1:{port}").parse().unwrap();
    Fleet::connect(&url, None).await.unwrap()
}

async fn gateway_ids(fleet: &Fleet, ttl: Duration) -> Vec<String> {
    fleet
        .members(MemberRole::Gateway, ttl)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id.to_string())
        .collect()
}

#[tokio::test]
async fn members_live_by_heartbeat_and_forged_ones_are_ignored() {
    let r = redis();
    let fleet = connect(r.port).await;
    let ttl = Duration::from_secs(2);
    fleet
        .heartbeat(&member("gw-a", MemberRole::Gateway), ttl)
        .await
        .unwrap();
    fleet
        .heartbeat(&member("gw-b", MemberRole::Gateway), ttl)
        .await
        .unwrap();
    fleet
        .heartbeat(&member("sched-1", MemberRole::Scheduler), ttl)
        .await
        .unwrap();
    let gws = fleet.members(MemberRole::Gateway, ttl).await.unwrap();
    let ids: Vec<_> = gws.iter().map(|m| m.id.to_string()).collect();
    assert_eq!(ids, ["gw-a", "gw-b"]);
    assert_eq!(
        fleet
            .members(MemberRole::Scheduler, ttl)
            .await
            .unwrap()
            .len(),
        1
    );

    // A hostile writer: an immortal member, a member whose record names
    // another, garbage, a bad id.
    let far = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 86_400)
        .to_string();
    cli(r.port, &["ZADD", "customs:members:gateway", &far, "evil"]);
    cli(
        r.port,
        &[
            "HSET",
            "customs:member-info:gateway",
            "evil",
            &format!(r#"{{"id":"evil","role":"gateway","expires_at":{far}}}"#),
        ],
    );
    cli(
        r.port,
        &[
            "ZADD",
            "customs:members:gateway",
            "99999999999",
            "gw-x",
            "99999999999",
            "bad id!",
        ],
    );
    cli(
        r.port,
        &[
            "HSET",
            "customs:member-info:gateway",
            "gw-x",
            r#"{"id":"gw-a","role":"gateway"}"#,
            "bad id!",
            "{}",
        ],
    );
    cli(
        r.port,
        &["HSET", "customs:member-info:gateway", "gw-a", "not json"],
    );
    assert_eq!(
        gateway_ids(&fleet, ttl).await,
        ["gw-b"],
        "only the honest, live record counts"
    );
    // gw-c heartbeats once, then stops.
    fleet
        .heartbeat(&member("gw-c", MemberRole::Gateway), ttl)
        .await
        .unwrap();
    assert_eq!(gateway_ids(&fleet, ttl).await, ["gw-b", "gw-c"]);

    // A member that stops heartbeating is gone within its TTL; one that
    // keeps heartbeating stays.
    let token = tokio_util::sync::CancellationToken::new();
    let lazy = std::sync::Arc::new(customs_fleet::LazyFleet::new(
        format!("redis://127.0.0.1:{}", r.port).parse().unwrap(),
        None,
    ));
    let hb = spawn_heartbeat(
        lazy,
        member("gw-b", MemberRole::Gateway),
        ttl,
        token.clone(),
    );
    tokio::time::sleep(ttl + Duration::from_secs(2)).await;
    assert_eq!(
        gateway_ids(&fleet, ttl).await,
        ["gw-b"],
        "gw-c expired, gw-b kept alive"
    );
    // A clean shutdown leaves at once.
    token.cancel();
    hb.await.unwrap();
    assert!(
        fleet
            .members(MemberRole::Gateway, ttl)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn jobs_are_shared_bounded_and_redis_down_is_a_clear_error() {
    let r = redis();
    let a = connect(r.port).await;
    let b = connect(r.port).await;
    let id = a.next_job_id().await.unwrap();
    assert_ne!(b.next_job_id().await.unwrap(), id, "ids are fleet-unique");
    a.put_job(id, br#"{"id":1}"#).await.unwrap();
    assert_eq!(b.get_job(id).await.unwrap().unwrap(), br#"{"id":1}"#);
    assert!(b.get_job(id + 100).await.unwrap().is_none());
    // A hostile value far beyond any job record is refused, not read whole.
    let huge = "x".repeat(customs_fleet::jobs::MAX_JOB_BYTES + 10);
    let key = format!("customs:preheat:job:{}", id + 1);
    let out = Command::new("redis-cli")
        .args(["-p", &r.port.to_string(), "-x", "SET", &key])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(huge.as_bytes())?;
            c.wait()
        })
        .unwrap();
    assert!(out.success());
    assert!(matches!(
        b.get_job(id + 1).await,
        Err(FleetError::Malformed { .. })
    ));
    cli(r.port, &["SET", "customs:preheat:next-id", "-5"]);
    assert!(matches!(
        a.next_job_id().await,
        Err(FleetError::Malformed { .. })
    ));

    // Redis gone: every call fails within the command timeout, with a
    // message naming the fleet store.
    drop(r);
    let t = Instant::now();
    let err = a.next_job_id().await.unwrap_err();
    assert!(
        t.elapsed() < customs_fleet::COMMAND_TIMEOUT + Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    assert!(err.to_string().contains("fleet store"), "{err}");
}
