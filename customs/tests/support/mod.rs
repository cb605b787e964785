//! Test kit for end-to-end tests and benchmarks: a real `docker-registry`
//! upstream, images built by `testdata/make-image.py` and pushed by
//! `skopeo`, a fault-injecting counting proxy in front of the upstream, the
//! `customs` binary as a child process, and a private containerd.
#![allow(dead_code, clippy::unwrap_used)]

pub mod containerd;
pub mod procfs;
pub mod proxy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A free loopback port (bound then released), drawn from below the
/// kernel's ephemeral range (32768–60999): a port the kernel hands to some
/// other process's `bind(:0)` or outgoing connection in the meantime can
/// then never be this one, which made parallel tests flaky.
pub fn free_port() -> u16 {
    free_base(0)
}

/// Runs `cmd` to completion; fails the test with its stderr unless it
/// succeeded.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Fails the test with a clear message when a tool the test needs is missing.
pub fn require(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{tool} is not installed: run scripts/test (it installs docker-registry, skopeo and containerd)"
    );
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) {
    let start = Instant::now();
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < timeout,
            "nothing listens on {addr} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `proc` accepts TCP connections on `addr`; fails at once,
/// with the tail of its log, when it exits first.
pub fn wait_for_child_port(proc: &mut Proc, addr: SocketAddr, log: &Path, timeout: Duration) {
    let start = Instant::now();
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        let tail = || {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!(
                "{} exited ({status}) before listening on {addr}:\n{}",
                proc.name,
                tail()
            );
        }
        assert!(
            start.elapsed() < timeout,
            "nothing listens on {addr} after {timeout:?}; {} log:\n{}",
            proc.name,
            tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > Duration::from_secs(15) {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    /// SIGTERM first so `customs up` stops its fleet, then SIGKILL.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.terminate();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real `docker-registry` (distribution 2.8) on a loopback port.
pub struct Registry {
    pub addr: SocketAddr,
    dir: PathBuf,
    proc: Option<Proc>,
    /// `user:password` required by the registry (htpasswd basic auth).
    pub creds: Option<(String, String)>,
    /// Whether the registry writes its access log (to `registry.log`).
    access_log: bool,
}

impl Registry {
    /// Starts a registry storing under `dir`.
    pub fn start(dir: &Path) -> Registry {
        Self::start_as(dir, None, false)
    }

    /// Starts a registry that logs every request: [`Registry::blob_gets`]
    /// counts what was fetched from it.
    pub fn start_with_access_log(dir: &Path) -> Registry {
        Self::start_as(dir, None, true)
    }

    fn start_as(dir: &Path, creds: Option<(String, String)>, access_log: bool) -> Registry {
        require("docker-registry");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut r = Registry {
            addr,
            dir: dir.to_path_buf(),
            proc: None,
            creds,
            access_log,
        };
        r.restart();
        r
    }

    /// Blob GETs the registry answered, by digest, from its access log.
    pub fn blob_gets(&self) -> std::collections::BTreeMap<String, usize> {
        assert!(self.access_log, "started without an access log");
        let log = std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default();
        let mut out = std::collections::BTreeMap::new();
        for line in log.lines() {
            // Combined log format: "GET /v2/<repo>/blobs/<digest> HTTP/1.1" <status>
            if let Some(rest) = line.split("\"GET /v2/").nth(1)
                && let Some((path, _)) = rest.split_once(' ')
                && let Some((_, digest)) = path.split_once("/blobs/")
            {
                *out.entry(digest.to_owned()).or_insert(0) += 1;
            }
        }
        out
    }

    /// Starts a registry that requires basic auth (htpasswd, bcrypt).
    pub fn start_with_auth(dir: &Path, user: &str, password: &str) -> Registry {
        Self::start_as(dir, Some((user.to_owned(), password.to_owned())), false)
    }

    /// Starts (again) on the same port and storage.
    pub fn restart(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        let cfg = self.dir.join("config.yml");
        let mut text = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: {}\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}\n",
            !self.access_log,
            self.dir.join("data").display(),
            self.addr
        );
        if let Some((user, password)) = &self.creds {
            let out = Command::new("python3")
                .arg("-c")
                .arg("import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))")
                .arg(password)
                .output()
                .unwrap();
            let hash = String::from_utf8(out.stdout).unwrap();
            let htpasswd = self.dir.join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{}\n", hash.trim())).unwrap();
            text.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(&cfg, text).unwrap();
        let log = std::fs::File::create(self.dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.proc = Some(Proc {
            child,
            name: "docker-registry".into(),
        });
        wait_for_port(self.addr, Duration::from_secs(20));
    }

    /// Stops it (the upstream goes down).
    pub fn stop(&mut self) {
        self.proc = None;
    }

    /// The registry process, for CPU figures.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Builds an OCI layout with `testdata/make-image.py`; returns the digest of `tag`.
pub fn make_image(
    layout: &Path,
    tag: &str,
    layer_sizes: &[u64],
    archs: &[&str],
    seed: u64,
) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg(repo_root().join("testdata/make-image.py"))
        .arg(layout)
        .arg(tag);
    for s in layer_sizes {
        cmd.arg(s.to_string());
    }
    for a in archs {
        cmd.arg("--arch").arg(a);
    }
    cmd.arg("--seed").arg(seed.to_string());
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "make-image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `skopeo copy [--all] oci:LAYOUT:TAG docker://REGISTRY/REPO:TAG`.
pub fn push(layout: &Path, tag: &str, registry: SocketAddr, repo: &str) {
    push_as(layout, tag, registry, repo, None)
}

/// [`push`] with `user:password` credentials.
pub fn push_as(layout: &Path, tag: &str, registry: SocketAddr, repo: &str, creds: Option<&str>) {
    require("skopeo");
    let mut cmd = Command::new("skopeo");
    cmd.args([
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ]);
    if let Some(c) = creds {
        cmd.arg("--dest-creds").arg(c);
    }
    let out = cmd
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{registry}/{repo}:{tag}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// [`skopeo_pull`] that gives up after `limit` (so a server that hangs
/// fails the test instead of stalling it): (success, stderr, elapsed).
pub fn skopeo_pull_within(src: &str, dest: &Path, limit: Duration) -> (bool, String, Duration) {
    let started = Instant::now();
    let out = Command::new("timeout")
        .arg(limit.as_secs().to_string())
        .args([
            "skopeo",
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--retry-times=0",
        ])
        .arg(format!("docker://{src}"))
        .arg(format!("oci:{}:pulled", dest.display()))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

/// `skopeo copy --all docker://SRC oci:DEST:pulled`; returns (success,
/// stderr). Bounded at 30 min, far beyond any pull a test or bench makes.
pub fn skopeo_pull(src: &str, dest: &Path) -> (bool, String) {
    let (ok, err, _) = skopeo_pull_within(src, dest, Duration::from_secs(1800));
    (ok, err)
}

/// Every blob digest in an OCI layout (what was pushed or pulled).
pub fn layout_blobs(layout: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect()
}

/// The digest the `pulled` tag of a layout points to.
pub fn layout_tag_digest(layout: &Path, tag: &str) -> String {
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .map(|m| m["digest"].as_str().unwrap().to_owned())
        .unwrap()
}

/// sha256 of a file, streamed.
pub fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// A `customs` child process.
pub struct Customs {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

impl Customs {
    /// Runs `customs <args>`, listening on `addr`; waits for the port.
    pub fn spawn(args: &[String], addr: SocketAddr, data_dir: &Path) -> Customs {
        let log = data_dir.with_extension("log");
        std::fs::create_dir_all(data_dir).unwrap();
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_customs"))
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        let mut proc = Proc {
            child,
            name: "customs".into(),
        };
        wait_for_child_port(&mut proc, addr, &log, Duration::from_secs(30));
        Customs {
            proc,
            addr,
            data_dir: data_dir.to_path_buf(),
            log,
        }
    }

    /// `customs up --data-dir D --listen A --upstream URL [extra...]`.
    pub fn up(data_dir: &Path, upstream: &str, extra: &[&str]) -> Customs {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut args: Vec<String> = vec![
            "up".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen".into(),
            addr.to_string(),
            "--upstream".into(),
            upstream.into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Customs::spawn(&args, addr, data_dir)
    }

    /// `customs peer --gateway G --listen A --data-dir D`.
    pub fn peer(data_dir: &Path, gateway: &str, default_registry: &str) -> Customs {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let args: Vec<String> = vec![
            "peer".into(),
            "--gateway".into(),
            gateway.into(),
            "--listen".into(),
            addr.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--default-registry".into(),
            default_registry.into(),
        ];
        Customs::spawn(&args, addr, data_dir)
    }

    /// `http://ADDR`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process log so far (for assertion messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A `--listen` port for `customs up --peers N`: peers listen on --listen +
/// i and serve pieces on --listen + N + i, so this finds a base with 2N + 1
/// free ports, below the kernel's ephemeral range (32768 and up), where
/// outgoing connections of tests running at the same time cannot take them
/// between this check and the bind.
pub fn free_base(peers: u16) -> u16 {
    // Ports this test process handed out already: two tests running in
    // parallel threads must never be given overlapping ranges.
    static TAKEN: std::sync::Mutex<Vec<(u16, u16)>> = std::sync::Mutex::new(Vec::new());
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id().wrapping_mul(2_654_435_761)
        ^ CALLS
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9)
        | 1;
    loop {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let p = 20_000 + (seed % 12_000) as u16;
        let last = p + 2 * peers;
        let mut taken = TAKEN.lock().unwrap();
        if taken.iter().any(|&(a, b)| p <= b && a <= last) {
            continue;
        }
        if (p..=last).all(|q| std::net::TcpListener::bind(("127.0.0.1", q)).is_ok()) {
            taken.push((p, last));
            return p;
        }
    }
}

/// `customs up --peers N` with an explicit scheduler port; waits for every peer.
pub struct Fleet {
    pub gateway: Customs,
    pub peers: Vec<SocketAddr>,
    pub scheduler: SocketAddr,
}

impl Fleet {
    pub fn up(data_dir: &Path, upstream: &str, peers: u16, extra: &[&str]) -> Fleet {
        let base = free_base(peers);
        let addr: SocketAddr = format!("127.0.0.1:{base}").parse().unwrap();
        let scheduler: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut args: Vec<String> = vec![
            "up".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen".into(),
            addr.to_string(),
            "--upstream".into(),
            upstream.into(),
            "--peers".into(),
            peers.to_string(),
            "--scheduler-listen".into(),
            scheduler.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let gateway = Customs::spawn(&args, addr, data_dir);
        let peers: Vec<SocketAddr> = (1..=peers)
            .map(|i| SocketAddr::new(addr.ip(), base + i))
            .collect();
        for p in &peers {
            wait_for_port(*p, Duration::from_secs(30));
        }
        Fleet {
            gateway,
            peers,
            scheduler,
        }
    }

    /// A peer's `/customs/v1/status`.
    pub fn peer_status(&self, i: usize) -> serde_json::Value {
        http_get_json(&format!("http://{}/customs/v1/status", self.peers[i]))
    }
}

/// A blocking GET of a JSON document over plain HTTP on loopback.
pub fn http_get_json(url: &str) -> serde_json::Value {
    let body = http_get_text(url);
    serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
}

/// A blocking GET over plain HTTP on loopback: the body (not chunked).
pub fn http_get_text(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

/// A number from the environment, for benchmark knobs.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The slsa-verifier container vector (keyless SLSA v0.2 provenance on a
/// multi-arch index, as `cosign save` wrote it).
pub fn slsa_vector_dir() -> PathBuf {
    repo_root().join("testdata/vectors/slsa-container-v1.10.0")
}

/// The vector's index digest.
pub fn slsa_vector_digest() -> String {
    std::fs::read_to_string(slsa_vector_dir().join("digest"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Pushes the vector to `registry/repo`: the layout is copied, its entries
/// named (`v1` for the index, `sha256-<hex>.att` for the attestation) so
/// skopeo can address them, and both pushed with digests preserved.
pub fn push_slsa_vector(dir: &Path, registry: SocketAddr, repo: &str) {
    let layout = dir.join("slsa-layout");
    let src = slsa_vector_dir().join("layout");
    let att_tag = slsa_vector_digest().replace(':', "-") + ".att";
    if !layout.join("index.json").exists() {
        std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        for e in std::fs::read_dir(src.join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), layout.join("blobs/sha256").join(e.file_name())).unwrap();
        }
        std::fs::copy(src.join("oci-layout"), layout.join("oci-layout")).unwrap();
        let mut index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(src.join("index.json")).unwrap()).unwrap();
        for m in index["manifests"].as_array_mut().unwrap() {
            let name = match m["annotations"]["kind"].as_str().unwrap() {
                "dev.cosignproject.cosign/imageIndex" => "v1".to_owned(),
                "dev.cosignproject.cosign/atts" => att_tag.clone(),
                other => panic!("unexpected entry {other}"),
            };
            m["annotations"]["org.opencontainers.image.ref.name"] = name.into();
        }
        std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    }
    push(&layout, "v1", registry, repo);
    push(&layout, &att_tag, registry, repo);
}

/// The issuer of GitHub Actions OIDC tokens.
pub const GH_ISSUER: &str = "https://token.actions.githubusercontent.com";
/// The builder that made the slsa-verifier container vector.
pub const SLSA_GENERATOR: &str = "https://github.com/slsa-framework/slsa-github-generator/.github/workflows/generator_container_slsa3.yml@refs/tags/v1.10.0";

/// Copies the public-good trusted root the vector was signed under into
/// `dir/trust/` and returns an ImagePolicy document (`slsa`) that admits
/// the vector for `images` when its provenance names `source_repo`.
pub fn slsa_vector_policy(dir: &Path, images: &[String], source_repo: &str) -> String {
    std::fs::create_dir_all(dir.join("trust")).unwrap();
    std::fs::copy(
        repo_root().join("testdata/vectors/sigstore-rs/trusted_root_prod.json"),
        dir.join("trust/trusted_root.json"),
    )
    .unwrap();
    let images: Vec<String> = images.iter().map(|i| format!("\"{i}\"")).collect();
    format!(
        r#"apiVersion: customs.dev/v1alpha1
kind: ImagePolicy
metadata: {{name: slsa}}
spec:
  images: [{}]
  mode: enforce
  authorities:
    - name: generator
      keyless:
        trustedRoot: trust/trusted_root.json
        identities:
          - {{issuer: "{GH_ISSUER}", subjectRegExp: "^https://github.com/slsa-framework/slsa-github-generator/"}}
  attestations:
    - name: provenance
      predicateType: https://slsa.dev/provenance/v0.2
      authorities: [generator]
      slsa:
        builderIds: ["{SLSA_GENERATOR}"]
        sourceRepositories: ["{source_repo}"]
"#,
        images.join(", ")
    )
}

/// Runs `customs <args>` in the background with its log at `dir/NAME.log`.
pub fn spawn_customs(dir: &Path, name: &str, args: &[String]) -> Proc {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_customs"))
        .args(args)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    Proc {
        child,
        name: name.into(),
    }
}

/// Runs the independent signer (testdata/sign.py); returns its stdout.
pub fn sign_py(args: &[&str]) -> String {
    let out = run_ok(
        Command::new("python3")
            .arg(repo_root().join("testdata/sign.py"))
            .args(args),
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Strings from string slices, for argument lists.
pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Separate `customs gateway`, `customs scheduler` and `n` `customs peer`
/// processes (peer-1 … peer-n), all on mTLS from `customs certs`.
pub struct Standalone {
    pub gateway: Proc,
    pub scheduler: Proc,
    /// What started the scheduler (to restart it).
    pub scheduler_args: Vec<String>,
    pub peers: Vec<Proc>,
    /// The gateway's OCI endpoint (host:port).
    pub gateway_addr: String,
    /// The peers' containerd-facing endpoints (host:port).
    pub peer_addrs: Vec<String>,
}

impl Standalone {
    /// Starts the fleet; `gateway_extra` and `peer_extra` are added to the
    /// gateway's and every peer's arguments.
    pub fn start(
        dir: &Path,
        registry: &Registry,
        n: usize,
        gateway_extra: &[String],
        peer_extra: &[String],
    ) -> Standalone {
        Self::start_with(dir, registry, n, gateway_extra, peer_extra, &[])
    }

    /// [`Standalone::start`] with `scheduler_extra` added to the
    /// scheduler's arguments.
    pub fn start_with(
        dir: &Path,
        registry: &Registry,
        n: usize,
        gateway_extra: &[String],
        peer_extra: &[String],
        scheduler_extra: &[String],
    ) -> Standalone {
        let pki = dir.join("pki");
        let mut issue = strings(&[
            "certs",
            "--out",
            pki.to_str().unwrap(),
            "--issue",
            "gateway:gateway",
            "--issue",
            "scheduler:scheduler",
        ]);
        for i in 1..=n {
            issue.push("--issue".into());
            issue.push(format!("peer-{i}:peer"));
        }
        run_ok(Command::new(env!("CARGO_BIN_EXE_customs")).args(&issue));
        let p = |f: &str| pki.join(f).display().to_string();
        let port = || format!("127.0.0.1:{}", free_port());
        let (gw_addr, up_addr, sched_addr) = (port(), port(), port());
        let key = dir.join("gw/key.pem");
        let tls = |name: &str| {
            strings(&[
                "--tls-ca",
                &p("ca.pem"),
                "--tls-cert",
                &p(&format!("{name}.pem")),
                "--tls-key",
                &p(&format!("{name}.key")),
            ])
        };
        let gw_args = [
            strings(&["gateway", "--data-dir", dir.join("gw").to_str().unwrap()]),
            strings(&["--listen", &gw_addr, "--upstream", &registry.url()]),
            strings(&["--upload-listen", &up_addr]),
            strings(&["--scheduler", &format!("https://{sched_addr}")]),
            strings(&["--signing-key", key.to_str().unwrap()]),
            tls("gateway"),
            gateway_extra.to_vec(),
        ]
        .concat();
        let gateway = spawn_customs(dir, "gateway", &gw_args);
        wait_for_port(up_addr.parse().unwrap(), Duration::from_secs(30));
        let key_pub = key.with_extension("pub").display().to_string();
        let scheduler_args = [
            strings(&[
                "scheduler",
                "--listen",
                &sched_addr,
                "--gateway-key",
                &key_pub,
            ]),
            tls("scheduler"),
            scheduler_extra.to_vec(),
        ]
        .concat();
        let scheduler = spawn_customs(dir, "scheduler", &scheduler_args);
        wait_for_port(sched_addr.parse().unwrap(), Duration::from_secs(20));
        let mut peers = Vec::new();
        let mut peer_addrs = Vec::new();
        for i in 1..=n {
            let name = format!("peer-{i}");
            let listen = port();
            let args = [
                strings(&["peer", "--gateway", &format!("https://{up_addr}")]),
                strings(&["--scheduler", &format!("https://{sched_addr}")]),
                strings(&["--listen", &listen, "--upload-listen", &port()]),
                strings(&["--peer-id", &name, "--gateway-key", &key_pub]),
                strings(&["--data-dir", dir.join(&name).to_str().unwrap()]),
                tls(&name),
                strings(&["--default-registry", &registry.addr.to_string()]),
                peer_extra.to_vec(),
            ]
            .concat();
            peers.push(spawn_customs(dir, &name, &args));
            wait_for_port(listen.parse().unwrap(), Duration::from_secs(20));
            peer_addrs.push(listen);
        }
        Standalone {
            gateway,
            scheduler,
            scheduler_args,
            peers,
            gateway_addr: gw_addr,
            peer_addrs,
        }
    }
}

/// Pulls manifest and blobs (config and layers at once) of `repo:tag`
/// from `endpoint` like a runtime would, discarding the bytes; returns
/// seconds. Benchmarks use it where skopeo's own disk writes would blur
/// the figure.
pub async fn pull_discarding(
    http: reqwest::Client,
    endpoint: SocketAddr,
    ns: String,
    repo: &str,
    tag: &str,
) -> f64 {
    let t = Instant::now();
    let r = http
        .get(format!(
            "http://{endpoint}/v2/{repo}/manifests/{tag}?ns={ns}"
        ))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    let status = r.status();
    let m: serde_json::Value = r.json().await.unwrap();
    assert!(
        status.is_success(),
        "manifest from {endpoint}: {status} {m}"
    );
    let mut digests = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
    digests.extend(
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned()),
    );
    // Config and layers at once, as containerd fetches an image's children.
    let fetches = digests.into_iter().map(|d| {
        let http = http.clone();
        let ns = ns.clone();
        async move {
            let mut r = http
                .get(format!("http://{endpoint}/v2/{repo}/blobs/{d}?ns={ns}"))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{endpoint} {d}: {}", r.status());
            while r.chunk().await.unwrap().is_some() {}
        }
    });
    futures_util::future::join_all(fetches).await;
    t.elapsed().as_secs_f64()
}

/// One HTTP/1.1 request on loopback with an optional bearer token (the
/// operator API); returns (status, body), a chunked body decoded.
pub fn api_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return (status, body.to_owned());
    }
    // Chunked: size line, data, CRLF, until a zero-size chunk.
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    (status, out)
}

/// The value of the Prometheus sample `name` (e.g.
/// `customs_served_bytes_total`) whose labels include every pair in
/// `labels`, from a text exposition.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (set, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        let have: Vec<(&str, &str)> = set
            .split(',')
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k, v.trim_matches('"')))
            })
            .collect();
        labels
            .iter()
            .all(|want| have.contains(want))
            .then(|| value.trim().parse().ok())?
    })
}
