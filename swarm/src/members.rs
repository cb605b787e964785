//! The gateways and schedulers a node works with, and which one to ask.
//!
//! A node starts from a bootstrap list (`--gateway`, repeatable; one
//! `--scheduler`) and learns the live fleet from any gateway it reaches
//! (`GET /customs/v1/fleet` on the gateway's mTLS endpoint). Tasks are
//! placed on schedulers by rendezvous hashing of the blob digest over the
//! schedulers' member ids, so every peer and every gateway asks the same
//! scheduler about a blob, and when that scheduler dies the next in the
//! order takes its tasks. Gateways are used in order; one that cannot be
//! reached passes the turn to the next.
//!
//! The list comes from a gateway, which is trusted to route (it holds the
//! gateway role) but not believed blindly: entries are bounded in number
//! and length, URLs must be `https://`, and every connection still checks
//! the role of whoever answers.

use customs_protocol::Digest;
use customs_protocol::scheduler_proto::scheduler_client::SchedulerClient;
use serde::Deserialize;
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use tonic::transport::{Channel, ClientTlsConfig};

/// Most gateways or schedulers taken from a fleet document.
pub const MAX_MEMBERS: usize = 256;
/// Longest a connection to a scheduler may take to open.
pub const SCHEDULER_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest one scheduler call may take (they are small and in memory).
pub const SCHEDULER_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest id or endpoint accepted from a fleet document.
const MAX_FIELD: usize = 256;

/// `GET /customs/v1/fleet`: the live members as a gateway sees them.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct FleetDoc {
    /// Gateways and their mTLS peer endpoints.
    #[serde(default)]
    pub gateways: Vec<GatewayEntry>,
    /// Schedulers and their gRPC endpoints.
    #[serde(default)]
    pub schedulers: Vec<SchedulerEntry>,
}

/// A gateway in a [`FleetDoc`].
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct GatewayEntry {
    /// Its member id.
    pub id: String,
    /// `https://host:port` of its peer endpoint.
    pub upload: String,
    /// Its zone (empty: none).
    #[serde(default)]
    pub zone: String,
}

/// A scheduler in a [`FleetDoc`].
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct SchedulerEntry {
    /// Its member id.
    pub id: String,
    /// `host:port` of its gRPC endpoint.
    pub grpc: String,
}

fn sane(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_FIELD && s.chars().all(|c| c.is_ascii_graphic())
}

/// Whether `base` is an `https://host:port` URL with nothing after it.
fn https_base(base: &str) -> bool {
    sane(base)
        && url::Url::parse(base).is_ok_and(|u| {
            u.scheme() == "https"
                && u.host_str().is_some()
                && u.path().trim_end_matches('/').is_empty()
                && u.query().is_none()
        })
}

/// Whom a swarm node talks to: its gateways and its schedulers.
#[derive(Clone)]
pub struct Members {
    /// The gateways (mTLS base URLs), tried in order.
    pub gateways: std::sync::Arc<Gateways>,
    /// The schedulers, ranked per blob.
    pub schedulers: std::sync::Arc<Schedulers>,
}

/// The gateways, in the order they are tried.
pub struct Gateways {
    /// This node's zone: learned gateways of it come first.
    zone: String,
    bootstrap: Vec<String>,
    all: RwLock<Vec<String>>,
    current: AtomicUsize,
}

impl Gateways {
    /// Starts from `bootstrap` (tried first, in order; never forgotten).
    pub fn new(bootstrap: Vec<String>) -> Self {
        let bootstrap: Vec<String> = bootstrap
            .into_iter()
            .map(|b| b.trim_end_matches('/').to_owned())
            .collect();
        Gateways {
            zone: String::new(),
            all: RwLock::new(bootstrap.clone()),
            bootstrap,
            current: AtomicUsize::new(0),
        }
    }

    /// The same list for a node in `zone`: of the gateways learned, those
    /// of its own zone are tried first.
    pub fn in_zone(mut self, zone: &str) -> Self {
        self.zone = zone.to_owned();
        self
    }

    /// The gateway to ask now.
    pub fn current(&self) -> String {
        let all = self.all.read().unwrap_or_else(|e| e.into_inner());
        all.get(self.current.load(Ordering::Relaxed) % all.len().max(1))
            .cloned()
            .unwrap_or_default()
    }

    /// How many are known (how many turns a request may take).
    pub fn len(&self) -> usize {
        self.all.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when none is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `base` could not be reached: the next one gets the turn (unless
    /// another request moved on already).
    pub fn failed(&self, base: &str) {
        let all = self.all.read().unwrap_or_else(|e| e.into_inner());
        let n = all.len().max(1);
        let i = self.current.load(Ordering::Relaxed);
        if all.get(i % n).is_some_and(|b| b == base) {
            let _ =
                self.current
                    .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
            tracing::warn!(gateway = %base, next = %all[(i + 1) % n], "gateway unreachable; using the next one");
        }
    }

    /// The bootstrap list plus the gateways `doc` names (valid ones only),
    /// keeping the current gateway current.
    pub fn learn(&self, doc: &FleetDoc) {
        let now = self.current();
        let mut all = self.bootstrap.clone();
        let mut learned: Vec<&GatewayEntry> = doc.gateways.iter().take(MAX_MEMBERS).collect();
        // Stable: same-zone gateways first, each group in the gateway's order.
        learned.sort_by_key(|g| self.zone.is_empty() || g.zone != self.zone);
        for g in learned {
            let base = g.upload.trim_end_matches('/');
            if https_base(base) && !all.iter().any(|b| b == base) {
                all.push(base.to_owned());
            }
        }
        let at = all.iter().position(|b| *b == now).unwrap_or(0);
        *self.all.write().unwrap_or_else(|e| e.into_inner()) = all;
        self.current.store(at, Ordering::Relaxed);
    }
}

/// One scheduler and its (lazily connecting) client.
#[derive(Clone)]
struct Known {
    id: String,
    grpc: String,
    client: SchedulerClient<Channel>,
}

/// The schedulers, ranked per blob.
pub struct Schedulers {
    tls: ClientTlsConfig,
    /// The configured scheduler, used while no fleet is known.
    bootstrap: Option<Known>,
    learned: RwLock<Vec<Known>>,
    /// Set when the set of ids changed, until [`Schedulers::take_moved`].
    moved: std::sync::atomic::AtomicBool,
    /// The instance each scheduler last answered an announcement with.
    instances: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// Why a scheduler set could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SchedulersError {
    /// The scheduler URL is unusable.
    #[error("scheduler URL {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

fn connect(url: &str, tls: &ClientTlsConfig) -> Result<SchedulerClient<Channel>, SchedulersError> {
    let bad = |reason: String| SchedulersError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    // Bounded: a scheduler whose host vanished (or an address that
    // blackholes) costs each call at most these, then the next is asked.
    let channel = Channel::from_shared(url.to_owned())
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(SCHEDULER_CONNECT_TIMEOUT)
        .timeout(SCHEDULER_CALL_TIMEOUT)
        .http2_keep_alive_interval(SCHEDULER_CALL_TIMEOUT)
        .keep_alive_timeout(SCHEDULER_CONNECT_TIMEOUT)
        .tls_config(tls.clone())
        .map_err(|e| bad(e.to_string()))?
        .connect_lazy();
    Ok(SchedulerClient::new(channel))
}

impl Schedulers {
    /// The scheduler at `bootstrap` (`https://host:port`), until a fleet is
    /// learned; `tls` must require the scheduler role.
    pub fn new(bootstrap: Option<&str>, tls: ClientTlsConfig) -> Result<Self, SchedulersError> {
        let bootstrap = match bootstrap {
            Some(url) => Some(Known {
                id: String::new(),
                grpc: url.to_owned(),
                client: connect(url, &tls)?,
            }),
            None => None,
        };
        Ok(Schedulers {
            tls,
            bootstrap,
            learned: RwLock::default(),
            moved: Default::default(),
            instances: Default::default(),
        })
    }

    /// A set of one client (tests).
    pub fn single(client: SchedulerClient<Channel>) -> Self {
        Schedulers {
            tls: ClientTlsConfig::new(),
            bootstrap: Some(Known {
                id: String::new(),
                grpc: String::new(),
                client,
            }),
            learned: RwLock::default(),
            moved: Default::default(),
            instances: Default::default(),
        }
    }

    /// Takes the schedulers `doc` names; an entry already known keeps its
    /// connection. Returns true when the set of ids changed (task owners
    /// may have moved: held pieces should be reported again).
    pub fn learn(&self, doc: &FleetDoc) -> bool {
        let old = self
            .learned
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut next: Vec<Known> = Vec::new();
        for s in doc.schedulers.iter().take(MAX_MEMBERS) {
            if !sane(&s.id) || !sane(&s.grpc) || next.iter().any(|k| k.id == s.id) {
                continue;
            }
            let url = format!("https://{}", s.grpc);
            if !https_base(&url) {
                continue;
            }
            match old.iter().find(|k| k.id == s.id && k.grpc == s.grpc) {
                Some(k) => next.push(k.clone()),
                None => match connect(&url, &self.tls) {
                    Ok(client) => next.push(Known {
                        id: s.id.clone(),
                        grpc: s.grpc.clone(),
                        client,
                    }),
                    Err(e) => tracing::warn!(scheduler = %s.id, error = %e, "scheduler skipped"),
                },
            }
        }
        let ids = |v: &[Known]| {
            let mut ids: Vec<String> = v.iter().map(|k| k.id.clone()).collect();
            ids.sort();
            ids
        };
        let changed = ids(&old) != ids(&next);
        if changed {
            tracing::info!(schedulers = ?ids(&next), "scheduler set changed");
            self.moved.store(true, Ordering::Relaxed);
        }
        *self.learned.write().unwrap_or_else(|e| e.into_inner()) = next;
        changed
    }

    /// Announces `info` to every scheduler at once (each call bounded by
    /// [`SCHEDULER_CALL_TIMEOUT`]). Returns true when what the schedulers
    /// know of this node may be gone: one answered with an instance not
    /// seen before (new or restarted), or the set changed since the last
    /// call (task owners moved). The caller then reports what it holds.
    pub async fn announce(&self, info: &customs_protocol::scheduler_proto::PeerInfo) -> bool {
        use customs_protocol::scheduler_proto::AnnouncePeerRequest;
        let all = self.all();
        let calls = all.into_iter().map(|(id, mut client)| async move {
            let r = client
                .announce_peer(AnnouncePeerRequest {
                    peer: Some(info.clone()),
                })
                .await;
            (id, r)
        });
        let results = futures_util::future::join_all(calls).await;
        let mut instances = self.instances.lock().unwrap_or_else(|e| e.into_inner());
        instances.retain(|id, _| results.iter().any(|(i, _)| i == id));
        let mut lost = self.take_moved();
        for (id, r) in results {
            match r {
                Ok(r) => {
                    let now = r.into_inner().instance;
                    if instances.get(&id) != Some(&now) {
                        lost = true;
                        instances.insert(id, now);
                    }
                }
                Err(e) => tracing::debug!(scheduler = %id, error = %e, "announce failed; retrying"),
            }
        }
        lost
    }

    /// True once after the set of schedulers changed (task owners may have
    /// moved): the caller reports what it holds again.
    pub fn take_moved(&self) -> bool {
        self.moved.swap(false, Ordering::Relaxed)
    }

    fn known(&self) -> Vec<Known> {
        let learned = self.learned.read().unwrap_or_else(|e| e.into_inner());
        if learned.is_empty() {
            self.bootstrap.iter().cloned().collect()
        } else {
            learned.clone()
        }
    }

    /// The schedulers for `blob`, its owner first, then who takes over.
    pub fn for_blob(&self, blob: &Digest) -> Vec<(String, SchedulerClient<Channel>)> {
        let key = blob.to_string();
        customs_protocol::rendezvous::ranked(key.as_bytes(), self.known(), |k| k.id.as_str())
            .into_iter()
            .map(|k| (k.id, k.client))
            .collect()
    }

    /// The owner of `blob`'s task (its id, empty for the bootstrap one).
    pub fn owner_of(&self, blob: &Digest) -> Option<String> {
        self.for_blob(blob).into_iter().next().map(|(id, _)| id)
    }

    /// Every scheduler (announcements go to all: any may be asked for a
    /// parent list that includes this node).
    pub fn all(&self) -> Vec<(String, SchedulerClient<Channel>)> {
        self.known().into_iter().map(|k| (k.id, k.client)).collect()
    }
}

/// Whether a failed scheduler call should go to the next scheduler: the
/// scheduler could not be reached or did not answer, as opposed to a
/// refusal it made.
pub fn try_next(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn gateways_fail_over_in_order_and_learning_keeps_the_current_one() {
        let g = Gateways::new(vec!["https://a:1".into(), "https://b:1/".into()]);
        assert_eq!(g.current(), "https://a:1");
        g.failed("https://a:1");
        assert_eq!(g.current(), "https://b:1");
        // A stale report about a gateway no longer current changes nothing.
        g.failed("https://a:1");
        assert_eq!(g.current(), "https://b:1");
        g.learn(&FleetDoc {
            gateways: vec![
                GatewayEntry {
                    id: "c".into(),
                    upload: "https://c:1".into(),
                    zone: String::new(),
                },
                GatewayEntry {
                    id: "evil".into(),
                    upload: "http://plain:1".into(),
                    zone: String::new(),
                },
                GatewayEntry {
                    id: "path".into(),
                    upload: "https://c:1/x".into(),
                    zone: String::new(),
                },
            ],
            schedulers: vec![],
        });
        assert_eq!(g.len(), 3, "plain-HTTP and path URLs are refused");
        assert_eq!(g.current(), "https://b:1");
        g.failed("https://b:1");
        assert_eq!(g.current(), "https://c:1");
        g.failed("https://c:1");
        assert_eq!(g.current(), "https://a:1", "wraps around");
    }

    #[test]
    fn learned_gateways_of_the_nodes_zone_come_first() {
        let g = Gateways::new(vec!["https://boot:1".into()]).in_zone("eu-1");
        let entry = |id: &str, zone: &str| GatewayEntry {
            id: id.into(),
            upload: format!("https://{id}:1"),
            zone: zone.into(),
        };
        g.learn(&FleetDoc {
            gateways: vec![
                entry("far", "us-1"),
                entry("near", "eu-1"),
                entry("none", ""),
            ],
            schedulers: vec![],
        });
        g.failed("https://boot:1");
        assert_eq!(g.current(), "https://near:1");
    }

    #[tokio::test]
    async fn blobs_are_placed_by_scheduler_id_and_move_when_one_goes() {
        let s = Schedulers::new(None, ClientTlsConfig::new()).unwrap();
        let entry = |id: &str| SchedulerEntry {
            id: id.into(),
            grpc: format!("127.0.0.1:{}", 1000 + id.len()),
        };
        let both = FleetDoc {
            gateways: vec![],
            schedulers: vec![entry("s-1"), entry("s-22")],
        };
        assert!(s.learn(&both));
        assert!(!s.learn(&both), "same set: nothing moved");
        let blob = Digest::of(b"x");
        let order: Vec<String> = s.for_blob(&blob).into_iter().map(|(id, _)| id).collect();
        assert_eq!(order.len(), 2);
        let survivor = order[1].clone();
        assert!(s.learn(&FleetDoc {
            gateways: vec![],
            schedulers: vec![entry(&survivor)],
        }));
        assert_eq!(
            s.owner_of(&blob),
            Some(survivor),
            "the next in order took over"
        );
    }

    proptest! {
        #[test]
        fn any_fleet_document_is_judged_without_panic(json in ".{0,400}") {
            if let Ok(doc) = serde_json::from_str::<FleetDoc>(&json) {
                let g = Gateways::new(vec!["https://a:1".into()]);
                g.learn(&doc);
                prop_assert!(g.len() <= MAX_MEMBERS + 1);
            }
        }

        #[test]
        fn oversized_documents_stay_bounded(n in 0usize..600) {
            let doc = FleetDoc {
                gateways: (0..n).map(|i| GatewayEntry { id: format!("g{i}"), upload: format!("https://g{i}:1"), zone: String::new() }).collect(),
                schedulers: vec![],
            };
            let g = Gateways::new(vec![]);
            g.learn(&doc);
            prop_assert!(g.len() <= MAX_MEMBERS);
        }
    }
}
