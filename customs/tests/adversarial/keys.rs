//! Finding 8: private keys were world-readable, and tokens could only be
//! passed on the command line (readable by every local user in
//! `/proc/*/cmdline`). Plays the other local user: checks the modes
//! `customs up` leaves, and that a key or token file that user could read
//! is refused at start with the file, its mode and the fix.

use crate::support::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// Runs `customs <args>` expecting it to refuse to start: fails the test if
/// it is still running after a few seconds; returns its log.
fn refused(dir: &Path, name: &str, args: &[String]) -> String {
    let mut p = spawn_customs(dir, name, args);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{name} started instead of refusing: {log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap()
}

/// Asserts `log` names `file`, its mode and the chmod that fixes it.
fn names_the_fix(log: &str, file: &Path, m: &str) {
    let f = file.display().to_string();
    assert!(
        log.contains(&f) && log.contains(m) && log.contains(&format!("chmod 600 {f}")),
        "the error must name {f}, mode {m} and the fix: {log}"
    );
}

/// The status code of `GET path` on `addr` with an optional bearer token.
fn get_status(addr: &str, path: &str, token: Option<&str>) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn keys_are_private_and_exposed_key_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    let data = dir.join("up");
    let mut up = Customs::up(&data, &registry.url(), &[]);
    let pki = data.join("pki");
    assert_eq!(mode(&data), 0o700, "data dir");
    assert_eq!(mode(&pki), 0o700, "pki dir");
    let keys: Vec<_> = std::fs::read_dir(&pki)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "key"))
        .collect();
    assert!(keys.len() >= 3, "ca, gateway, scheduler: {keys:?}");
    for k in keys.iter().chain([&data.join("gateway-key.pem")]) {
        assert_eq!(mode(k), 0o600, "{}", k.display());
    }
    assert!(up.proc.terminate().success());

    // The gateway's signing key, readable by others: refused.
    let signing = data.join("gateway-key.pem");
    chmod(&signing, 0o644);
    let args = strings(&[
        "gateway",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--upstream",
        &registry.url(),
    ]);
    names_the_fix(&refused(dir, "gateway-0644", &args), &signing, "0644");
    // `customs up` refuses it too (before anything listens).
    let up_args = strings(&[
        "up",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--upstream",
        &registry.url(),
    ]);
    names_the_fix(&refused(dir, "up-0644", &up_args), &signing, "0644");
    chmod(&signing, 0o600);

    // An mTLS key readable by the group: refused by TlsIdentity::load.
    let tls_key = pki.join("gateway.key");
    chmod(&tls_key, 0o640);
    names_the_fix(&refused(dir, "up-tls-0640", &up_args), &tls_key, "0640");
    chmod(&tls_key, 0o600);
}

#[test]
fn api_tokens_come_from_private_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let registry = Registry::start(&dir.join("registry"));
    let data = dir.join("up");
    let token_file = dir.join("api-token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    chmod(&token_file, 0o644);
    let api = format!("127.0.0.1:{}", free_port());
    let base = |extra: &[&str]| {
        let mut a = strings(&[
            "up",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--upstream",
            &registry.url(),
            "--api-listen",
            &api,
        ]);
        a.extend(strings(extra));
        a
    };
    let file = token_file.to_str().unwrap();
    names_the_fix(
        &refused(dir, "token-0644", &base(&["--api-token-file", file])),
        &token_file,
        "0644",
    );
    // A token given twice is an error, not a silent choice.
    let log = refused(
        dir,
        "token-twice",
        &base(&["--api-token-file", file, "--api-token", "other"]),
    );
    assert!(log.contains("--api-token"), "{log}");
    // The HEC token file is held to the same rule.
    let log = refused(
        dir,
        "hec-0644",
        &base(&[
            "--api-token",
            "x",
            "--audit-hec",
            "http://127.0.0.1:9/",
            "--audit-hec-token-file",
            file,
        ]),
    );
    names_the_fix(&log, &token_file, "0644");

    chmod(&token_file, 0o600);
    let args = base(&["--api-token-file", file]);
    let up = spawn_customs(dir, "token-0600", &args);
    wait_for_port(api.parse().unwrap(), Duration::from_secs(30));
    // The token is the file's content, newline trimmed; it is nowhere on
    // the command line.
    let path = "/oapi/v1/jobs/999999";
    assert_eq!(get_status(&api, path, None), 401);
    assert_eq!(get_status(&api, path, Some("s3cret-token\n".trim())), 404);
    assert_eq!(get_status(&api, path, Some("wrong")), 401);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", up.child.id())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("s3cret"));
    drop(up);
}
