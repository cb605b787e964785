//! A private containerd instance: its own config, root, state and socket
//! under a temp dir, CRI disabled, content isolated per namespace.

use super::{Proc, require};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Containerd {
    pub socket: PathBuf,
    _proc: Proc,
}

impl Containerd {
    pub fn start(dir: &Path) -> Containerd {
        require("containerd");
        require("ctr");
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("containerd.sock");
        let cfg = dir.join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{sock}.debug"
[plugins."io.containerd.metadata.v1.bolt"]
  content_sharing_policy = "isolated"
"#,
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = socket.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&cfg)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let proc = Proc {
            child,
            name: "containerd".into(),
        };
        let start = Instant::now();
        while !socket.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "containerd did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(300));
        Containerd {
            socket,
            _proc: proc,
        }
    }

    /// `ctr -n NS images pull --hosts-dir H --plain-http REF`; returns (ok, output).
    pub fn pull(&self, namespace: &str, hosts_dir: &Path, reference: &str) -> (bool, String) {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args([
                "-n",
                namespace,
                "images",
                "pull",
                "--plain-http",
                "--snapshotter",
                "native",
                "--hosts-dir",
            ])
            .arg(hosts_dir)
            .arg(reference)
            .output()
            .unwrap();
        outcome(&out)
    }

    /// `ctr -n NS run --rm --snapshotter native REF ID ARGS...` with runc;
    /// returns (ok, output).
    pub fn run(&self, namespace: &str, reference: &str, id: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", namespace, "run", "--rm", "--snapshotter", "native"])
            .arg(reference)
            .arg(id)
            .args(args)
            .output()
            .unwrap();
        outcome(&out)
    }

    /// The digest containerd recorded for an image.
    pub fn image_digest(&self, namespace: &str, reference: &str) -> Option<String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", namespace, "images", "ls"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter(|l| l.split_whitespace().next() == Some(reference))
            .flat_map(|l| l.split_whitespace())
            .find(|w| w.starts_with("sha256:"))
            .map(str::to_owned)
    }
}

/// (exit 0?, stdout and stderr) of a `ctr` run.
fn outcome(out: &std::process::Output) -> (bool, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
