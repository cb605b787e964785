//! Preheat jobs: verify an image and warm it into the fleet before any node
//! asks. A job resolves the manifest through the gateway's mirror (so the
//! policy decides; a denial fails the job with the policy's reason),
//! fetches and verifies every blob once, registers each blob's signed piece
//! manifest with the scheduler, then orders the targeted peers to pull the
//! pieces onto their own disks. A job is `SUCCESS` only when every targeted
//! peer answered that it holds every blob.
//!
//! Without a fleet, jobs live in memory (like the mirror's in-flight
//! state): a restarted gateway forgets them, and Harbor re-triggers on its
//! next push. With `--fleet-redis` every job record is also written to
//! Redis on each change, so any gateway answers for any job and records
//! outlive restarts; the gateway that created a job runs it, and a job
//! still pending when its gateway left the fleet reads as FAILURE.

use crate::metrics::{JobLabels, Metrics};
use crate::seed::Seed;
use crate::server::GatewayMirror;
use customs_mirror::MirrorError;
use customs_mirror::http::RegistryResolver;
use customs_mirror::warm::{PlatformFilter, WarmReport, warm};
use customs_protocol::scheduler_proto::PeerInfo;
use customs_protocol::{ImageName, Reference};
use customs_store::audit::{AuditLog, format_rfc3339};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Why a job could not be created or read.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The fleet's Redis did not answer: no job can be created or read
    /// through it (pulls are unaffected).
    #[error("preheat jobs unavailable: {0}")]
    Unavailable(#[from] customs_fleet::FleetError),
    /// A record in Redis that this gateway did not write (or no longer
    /// understands): reported, never acted on.
    #[error("job {id}: the fleet store holds a malformed record: {reason}")]
    Malformed {
        /// The job id asked for.
        id: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// The fleet's shared job records (`--fleet-redis`).
pub struct SharedJobs {
    /// The fleet's Redis.
    pub fleet: Arc<customs_fleet::LazyFleet>,
    /// This gateway's member id (named as each job's owner).
    pub me: customs_fleet::MemberId,
}

/// Most jobs remembered; the oldest finished ones are forgotten first.
const MAX_JOBS: usize = 10_000;

/// Which nodes a preheat targets (Harbor's and Dragonfly's names).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scope {
    /// The gateway only (`single_seed_peer`, `all_seed_peers`).
    SeedPeers,
    /// One peer (`single_peer`, Harbor's default).
    SinglePeer,
    /// Every live peer (`all_peers`).
    AllPeers,
    /// This many peers (`count`).
    Count(usize),
    /// This percentage of live peers, rounded up (`percentage`).
    Percentage(u8),
}

impl Scope {
    /// Reads Dragonfly's `scope`, `count` and `percentage` args.
    pub fn parse(
        scope: Option<&str>,
        count: Option<u64>,
        percentage: Option<u64>,
    ) -> Result<Scope, String> {
        match scope.unwrap_or("single_peer") {
            "single_seed_peer" | "all_seed_peers" => Ok(Scope::SeedPeers),
            "single_peer" | "" => Ok(Scope::SinglePeer),
            "all_peers" => Ok(Scope::AllPeers),
            "count" => match count {
                Some(n) if n > 0 => Ok(Scope::Count(n as usize)),
                _ => Err("scope count needs a positive `count`".into()),
            },
            "percentage" => match percentage {
                Some(p) if (1..=100).contains(&p) => Ok(Scope::Percentage(p as u8)),
                _ => Err("scope percentage needs `percentage` between 1 and 100".into()),
            },
            other => Err(format!(
                "unknown scope {:?}",
                other.chars().take(64).collect::<String>()
            )),
        }
    }

    /// The targets among `peers` (sorted by id, so a count is stable).
    pub fn select(self, peers: Vec<PeerInfo>) -> Vec<PeerInfo> {
        let n = match self {
            Scope::SeedPeers => 0,
            Scope::SinglePeer => 1,
            Scope::AllPeers => peers.len(),
            Scope::Count(n) => n,
            Scope::Percentage(p) => (peers.len() * p as usize).div_ceil(100),
        };
        peers.into_iter().take(n).collect()
    }
}

/// What to preheat, parsed from a job request or a webhook.
#[derive(Debug, Clone)]
pub struct PreheatSpec {
    /// The image (its real registry and repository).
    pub image: ImageName,
    /// Tag or digest.
    pub reference: Reference,
    /// The tag a push webhook named beside the digest it preheats: after
    /// the preheat it is resolved against the upstream (never set from the
    /// webhook), so nodes resolve it to that digest even once the upstream
    /// is down (within the stale window).
    pub tag: Option<customs_protocol::Tag>,
    /// Platforms of an index to warm.
    pub platform: PlatformFilter,
    /// Which nodes.
    pub scope: Scope,
}

/// A job's state, as Dragonfly (and Harbor) name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum JobState {
    /// Running or queued (Harbor polls again).
    Pending,
    /// Every targeted node holds every verified blob.
    Success,
    /// Denied by policy, or some node failed.
    Failure,
}

/// One node's part of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeResult {
    /// `gateway` or the peer id.
    pub node: String,
    /// Its state.
    pub state: JobState,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// What it holds now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<WarmReport>,
}

/// A preheat job and its progress (also its record in the fleet store).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// Integer id (Harbor decodes it as one).
    pub id: u64,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Overall state.
    pub state: JobState,
    /// The request's `args`, echoed back with every `headers` value
    /// redacted (Harbor puts its registry credentials there; a job record
    /// must never hand them to whoever can read jobs).
    pub args: serde_json::Value,
    /// `registry/repository:ref`.
    pub image: String,
    /// The failure reason, if any.
    pub error: String,
    /// Per-node results (gateway first).
    pub nodes: Vec<NodeResult>,
    /// Targets chosen (known once the gateway has verified the image).
    pub targets: usize,
    /// The gateway running it (its fleet member id; empty without a fleet).
    #[serde(default)]
    pub owner: String,
}

impl Job {
    /// RFC 3339 time of creation.
    pub fn created(&self) -> String {
        format_rfc3339(self.created_at)
    }
    /// RFC 3339 time of the last change.
    pub fn updated(&self) -> String {
        format_rfc3339(self.updated_at)
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What replaces a credential in a job record.
pub const REDACTED: &str = "[redacted]";

/// Replaces every value of `args.headers` (e.g. Harbor's `Authorization`)
/// with [`REDACTED`]; the names stay, so an operator can see what was sent.
pub fn redact_headers(args: &mut serde_json::Value) {
    if let Some(headers) = args.get_mut("headers") {
        match headers.as_object_mut() {
            Some(map) => {
                for v in map.values_mut() {
                    *v = serde_json::Value::String(REDACTED.to_owned());
                }
            }
            None => *headers = serde_json::Value::String(REDACTED.to_owned()),
        }
    }
}

/// Runs and remembers preheat jobs.
pub struct Preheater {
    mirror: Arc<GatewayMirror>,
    seed: Option<Arc<Seed>>,
    peers_http: Option<reqwest::Client>,
    resolver: RegistryResolver,
    audit: AuditLog,
    metrics: Arc<Metrics>,
    jobs: Mutex<BTreeMap<u64, Job>>,
    next_id: AtomicU64,
    shared: Option<SharedJobs>,
}

#[derive(Serialize)]
struct PreheatEvent<'a> {
    job: u64,
    image: &'a str,
    state: JobState,
    error: &'a str,
    nodes: &'a [NodeResult],
}

impl Preheater {
    /// `seed` and `peers_http` (an mTLS client) are needed to reach peers;
    /// without them only the gateway is warmed.
    pub fn new(
        mirror: Arc<GatewayMirror>,
        seed: Option<Arc<Seed>>,
        peers_http: Option<reqwest::Client>,
        resolver: RegistryResolver,
        audit: AuditLog,
        metrics: Arc<Metrics>,
    ) -> Self {
        Preheater {
            mirror,
            seed,
            peers_http,
            resolver,
            audit,
            metrics,
            jobs: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            shared: None,
        }
    }

    /// Keeps job records in the fleet's Redis too.
    pub fn with_shared_jobs(mut self, shared: SharedJobs) -> Self {
        self.shared = Some(shared);
        self
    }

    /// The registry a preheat URL's host names, if the gateway serves it.
    pub fn registry_for_host(
        &self,
        host: &str,
    ) -> Result<customs_protocol::RegistryHost, MirrorError> {
        self.resolver.resolve(Some(host))
    }

    /// A job by id: this gateway's own first, then the fleet's record.
    pub async fn job(&self, id: u64) -> Result<Option<Job>, JobError> {
        if let Some(j) = self.lock().get(&id).cloned() {
            return Ok(Some(j));
        }
        let Some(shared) = &self.shared else {
            return Ok(None);
        };
        let fleet = shared.fleet.get().await?;
        let Some(record) = fleet.get_job(id).await? else {
            return Ok(None);
        };
        let mut job: Job = serde_json::from_slice(&record).map_err(|e| JobError::Malformed {
            id,
            reason: e.to_string().chars().take(200).collect(),
        })?;
        if job.id != id {
            return Err(JobError::Malformed {
                id,
                reason: format!("the record is job {}'s", job.id),
            });
        }
        if job.state == JobState::Pending {
            // Pending on a gateway that left the fleet: it will never finish.
            let live = fleet
                .members(
                    customs_fleet::MemberRole::Gateway,
                    customs_fleet::member::MEMBER_TTL,
                )
                .await?;
            if !live.iter().any(|m| m.id.as_str() == job.owner) {
                job.state = JobState::Failure;
                job.error = format!(
                    "gateway {:?} left the fleet before the job finished; create it again",
                    job.owner.chars().take(64).collect::<String>()
                );
            }
        }
        Ok(Some(job))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Job>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes a job of this gateway and writes its record through to the
    /// fleet (a failed write is logged: the job goes on, and this gateway
    /// still answers for it).
    async fn update(&self, id: u64, f: impl FnOnce(&mut Job)) {
        let job = {
            let mut jobs = self.lock();
            let Some(j) = jobs.get_mut(&id) else { return };
            f(j);
            j.updated_at = now();
            j.clone()
        };
        if let Err(e) = self.persist(&job).await {
            tracing::warn!(job = id, error = %e, "preheat job record not written to the fleet store");
        }
    }

    async fn persist(&self, job: &Job) -> Result<(), JobError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let record = serde_json::to_vec(job).map_err(|e| JobError::Malformed {
            id: job.id,
            reason: e.to_string(),
        })?;
        shared.fleet.get().await?.put_job(job.id, &record).await?;
        Ok(())
    }

    /// Creates a job and starts it in the background. With a fleet, the id
    /// comes from Redis and the record is written before this returns: a
    /// job is never acknowledged that other gateways cannot see.
    pub async fn submit(
        self: &Arc<Self>,
        spec: PreheatSpec,
        mut args: serde_json::Value,
    ) -> Result<Job, JobError> {
        redact_headers(&mut args);
        let (id, owner) = match &self.shared {
            Some(shared) => (
                shared.fleet.get().await?.next_job_id().await?,
                shared.me.to_string(),
            ),
            None => (self.next_id.fetch_add(1, Ordering::Relaxed), String::new()),
        };
        let t = now();
        let image = match &spec.reference {
            Reference::Tag(tag) => format!("{}:{tag}", spec.image),
            Reference::Digest(d) => format!("{}@{d}", spec.image),
        };
        let job = Job {
            id,
            created_at: t,
            updated_at: t,
            state: JobState::Pending,
            args,
            image,
            error: String::new(),
            nodes: Vec::new(),
            targets: 0,
            owner,
        };
        self.persist(&job).await?;
        {
            let mut jobs = self.lock();
            while jobs.len() >= MAX_JOBS {
                let oldest = jobs
                    .iter()
                    .find(|(_, j)| j.state != JobState::Pending)
                    .map(|(k, _)| *k);
                match oldest {
                    Some(k) => jobs.remove(&k),
                    None => break,
                };
            }
            jobs.insert(id, job.clone());
        }
        tracing::info!(job = id, image = %job.image, scope = ?spec.scope, "preheat job created");
        let me = self.clone();
        customs_runtime::spawn(async move { me.run(id, spec).await });
        Ok(job)
    }

    async fn run(self: Arc<Self>, id: u64, spec: PreheatSpec) {
        let result = self.run_inner(id, &spec).await;
        let (state, error) = match result {
            Ok(()) => (JobState::Success, String::new()),
            Err(e) => (JobState::Failure, e),
        };
        self.update(id, |j| {
            j.state = state;
            j.error = error.clone();
        })
        .await;
        self.metrics
            .preheats
            .get_or_create(&JobLabels {
                state: if state == JobState::Success {
                    "success"
                } else {
                    "failure"
                }
                .to_owned(),
            })
            .inc();
        let Some(job) = self.lock().get(&id).cloned() else {
            return;
        };
        tracing::info!(job = id, image = %job.image, state = ?state, error = %error, "preheat job finished");
        let event = PreheatEvent {
            job: id,
            image: &job.image,
            state,
            error: &error,
            nodes: &job.nodes,
        };
        if let Err(e) = self.audit.write("preheat", &event).await {
            tracing::error!(job = id, error = %e, "preheat audit event could not be written");
        }
    }

    /// Resolves `tag` of `image` through the mirror, as a pull by tag
    /// would (fresh from the upstream, into the tag cache), and returns it
    /// when the upstream names the preheated `digest`. A webhook never
    /// moves a tag: what is cached is the upstream's answer, and a tag the
    /// upstream points elsewhere (or cannot resolve) is not passed on to
    /// nodes; the job's digest preheat stands either way.
    async fn warm_tag(
        &self,
        image: &ImageName,
        tag: &customs_protocol::Tag,
        digest: &str,
    ) -> Option<String> {
        match self
            .mirror
            .manifest(image, &Reference::Tag(tag.clone()))
            .await
        {
            Ok(m) if m.digest.to_string() == digest => {
                tracing::info!(%image, %tag, %digest, "preheat warmed the tag");
                Some(tag.to_string())
            }
            Ok(m) => {
                tracing::warn!(%image, %tag, pushed = %digest, upstream = %m.digest,
                    "the upstream's tag names another digest than the push event: the tag is left as the upstream says");
                None
            }
            Err(e) => {
                tracing::warn!(%image, %tag, error = %e, "the pushed tag could not be resolved; only the digest was preheated");
                None
            }
        }
    }

    async fn run_inner(&self, id: u64, spec: &PreheatSpec) -> Result<(), String> {
        // The gateway first: policy, every blob fetched once and verified.
        let report = warm(&self.mirror, &spec.image, &spec.reference, &spec.platform)
            .await
            .map_err(|e| e.to_string());
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                self.update(id, |j| {
                    j.nodes.push(NodeResult {
                        node: "gateway".into(),
                        state: JobState::Failure,
                        error: e.clone(),
                        report: None,
                    });
                })
                .await;
                return Err(e);
            }
        };
        self.update(id, |j| {
            j.nodes.push(NodeResult {
                node: "gateway".into(),
                state: JobState::Success,
                error: String::new(),
                report: Some(report.clone()),
            })
        })
        .await;
        let tag = match &spec.tag {
            Some(tag) => self.warm_tag(&spec.image, tag, &report.manifest).await,
            None => None,
        };
        if spec.scope == Scope::SeedPeers {
            return Ok(());
        }
        let (Some(seed), Some(http)) = (&self.seed, &self.peers_http) else {
            return Err("no scheduler configured: only seed-peer scopes can be preheated".into());
        };
        // Every blob's piece manifest registered before any peer asks.
        let manifest_digest: customs_protocol::Digest =
            report.manifest.parse().map_err(|e| format!("{e}"))?;
        for digest in self
            .blob_digests(&spec.image, &manifest_digest, &report)
            .await?
        {
            seed.ensure_task(&self.mirror, &spec.image, &digest, None, true)
                .await
                .map_err(|e| format!("registering {digest}: {e}"))?;
        }
        let peers = seed
            .list_peers()
            .await
            .map_err(|e| format!("listing peers: {e}"))?;
        let targets = spec.scope.select(peers);
        if targets.is_empty() {
            return Err("no live peer to preheat".into());
        }
        self.update(id, |j| j.targets = targets.len()).await;
        let platform = match &spec.platform {
            PlatformFilter::All => None,
            PlatformFilter::Only(p) => Some(p.clone()),
        };
        let order = serde_json::json!({
            "registry": spec.image.registry.as_str(),
            "repository": spec.image.repository.as_str(),
            "digest": report.manifest,
            "platform": platform,
            "tag": tag,
        });
        let calls = targets.iter().map(|p| {
            let http = http.clone();
            let order = order.clone();
            let peer = p.clone();
            async move {
                let url = format!("https://{}/customs/v1/preheat", peer.upload_addr);
                let r = async {
                    let resp = http
                        .post(&url)
                        .json(&order)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    let status = resp.status();
                    if !status.is_success() {
                        let body = resp.text().await.unwrap_or_default();
                        return Err(format!(
                            "{status}: {}",
                            body.chars().take(500).collect::<String>()
                        ));
                    }
                    resp.json::<WarmReport>().await.map_err(|e| e.to_string())
                }
                .await;
                (peer.peer_id, r)
            }
        });
        let results = futures_util::future::join_all(calls).await;
        let mut failed = Vec::new();
        for (node, r) in results {
            let result = match r {
                Ok(report) => NodeResult {
                    node,
                    state: JobState::Success,
                    error: String::new(),
                    report: Some(report),
                },
                Err(e) => {
                    failed.push(format!("{node}: {e}"));
                    NodeResult {
                        node,
                        state: JobState::Failure,
                        error: e,
                        report: None,
                    }
                }
            };
            self.update(id, |j| j.nodes.push(result)).await;
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!("peers failed: {}", failed.join("; ")))
        }
    }

    /// The blobs of the warmed manifests (config and layers of each image).
    async fn blob_digests(
        &self,
        image: &ImageName,
        top: &customs_protocol::Digest,
        report: &WarmReport,
    ) -> Result<Vec<customs_protocol::Digest>, String> {
        let mut manifests = vec![top.clone()];
        for p in &report.platforms {
            manifests.push(p.parse().map_err(|e| format!("{e}"))?);
        }
        let mut out = Vec::new();
        for m in manifests {
            let served = self
                .mirror
                .manifest(image, &Reference::Digest(m))
                .await
                .map_err(|e| e.to_string())?;
            let refs =
                customs_protocol::ManifestRefs::parse(&served.bytes, Some(&served.media_type))
                    .map_err(|e| e.to_string())?;
            for b in refs.blobs {
                if !out.contains(&b.digest) {
                    out.push(b.digest);
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_args_never_keep_credentials() {
        let mut args = serde_json::json!({
            "type": "image",
            "url": "http://h/v2/r/manifests/t",
            "headers": {"Authorization": "Bearer s3cret", "X-Other": "x"},
        });
        redact_headers(&mut args);
        let text = args.to_string();
        assert!(!text.contains("s3cret"), "{text}");
        assert_eq!(args["headers"]["Authorization"], REDACTED);
        let mut odd = serde_json::json!({"headers": "Bearer s3cret"});
        redact_headers(&mut odd);
        assert!(!odd.to_string().contains("s3cret"));
    }
}
