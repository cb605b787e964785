//! Where a gateway of a fleet gets a blob it does not hold: from the blob's
//! owner among the live gateways (rendezvous order of registry and digest),
//! and from the upstream only when it ranks first itself, so a fleet
//! fetches each blob from the upstream once.
//!
//! The owner is asked over mTLS on its peer endpoint with the ordinary OCI
//! blob request, naming registry (`ns`), repository and digest; it runs its
//! own admission and binding checks for it, as for any node (when it has
//! not seen the manifest yet it is asked for it by digest first, which
//! admits it there). What comes back is hashed by the store like an
//! upstream's bytes, so an owner can fail a transfer, never corrupt one.
//!
//! Addresses come from the fleet store, which is not trusted to say who
//! answers there: the connection must present a gateway certificate that
//! names the member asked for. A transfer that breaks off (the owner died)
//! resumes at the byte reached with the next gateway in the order, or the
//! upstream when that is this gateway: at most one extra upstream fetch.

use crate::registry_client::{RegistryClient, Timeouts, check_resumed};
use crate::upstream::Upstreams;
use customs_fleet::{MemberId, MemberView};
use customs_mirror::{FetchedManifest, Source};
use customs_protocol::manifest::{MANIFEST_MEDIA_TYPES, MAX_MANIFEST_BYTES};
use customs_protocol::{Digest, ImageName, Reference};
use customs_store::inflight::{ByteStream, SourceBody};
use customs_store::{FetchFailure, FetchFailureKind};
use customs_tls::{Role, TlsIdentity};
use futures_util::StreamExt;
use reqwest::StatusCode;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The endpoint name a gateway advertises its mTLS peer endpoint under.
pub const UPLOAD_ENDPOINT: &str = "upload";

/// The gateway's source: the upstreams, reached directly or, in a fleet,
/// through the owner of each blob.
pub struct FleetSource {
    upstreams: Arc<Upstreams>,
    owners: Option<Arc<BlobOwners>>,
}

impl FleetSource {
    /// The upstreams alone (no fleet, or a fleet without peer endpoints).
    pub fn direct(upstreams: Arc<Upstreams>) -> Self {
        FleetSource {
            upstreams,
            owners: None,
        }
    }

    /// The upstreams, with blobs routed to their owners among `owners`.
    pub fn routed(upstreams: Arc<Upstreams>, owners: Arc<BlobOwners>) -> Self {
        FleetSource {
            upstreams,
            owners: Some(owners),
        }
    }

    /// Whether this gateway states its fetch of `digest` to the swarm
    /// provisionally: outside a fleet always; in a fleet only the blob's
    /// owner does. Another gateway's fetch (from the owner) would be a
    /// second fetch of one blob, whose pieces peers holding the owner's
    /// statement could not use; its peers get its final manifest instead.
    pub fn states_fetches_of(&self, image: &ImageName, digest: &Digest) -> bool {
        self.owners.as_ref().is_none_or(|o| o.owns(image, digest))
    }

    /// The fleet routing, if any (for metrics).
    pub fn owners(&self) -> Option<&Arc<BlobOwners>> {
        self.owners.as_ref()
    }
}

/// Who owns which blob, and the clients that reach them.
pub struct BlobOwners {
    me: MemberId,
    /// This gateway's zone (empty: none).
    zone: String,
    gateways: Arc<MemberView>,
    identity: Arc<TlsIdentity>,
    timeouts: Timeouts,
    /// One client per (member, endpoint); bounded by the member cap.
    clients: Mutex<HashMap<(MemberId, String), Arc<RegistryClient>>>,
    /// Blob bytes received from other gateways.
    from_fleet: Arc<AtomicU64>,
}

/// Most clients kept: the fleet store lists at most this many gateways.
const MAX_CLIENTS: usize = customs_fleet::member::MAX_MEMBERS;

impl BlobOwners {
    /// Routing for gateway `me` over the live `gateways`.
    pub fn new(
        me: MemberId,
        zone: String,
        gateways: Arc<MemberView>,
        identity: Arc<TlsIdentity>,
        timeouts: Timeouts,
    ) -> Self {
        BlobOwners {
            me,
            zone,
            gateways,
            identity,
            timeouts,
            clients: Mutex::default(),
            from_fleet: Arc::default(),
        }
    }

    /// This gateway's member id.
    pub fn me(&self) -> &MemberId {
        &self.me
    }

    /// The ids of the live gateways blobs are routed over, sorted.
    pub fn live_ids(&self) -> Vec<String> {
        self.gateways
            .live()
            .into_iter()
            .map(|m| m.id.to_string())
            .collect()
    }

    /// Blob bytes received from other gateways so far.
    pub fn fleet_bytes(&self) -> u64 {
        self.from_fleet.load(Ordering::Relaxed)
    }

    /// Who to ask for `digest` of `registry`, best first (see
    /// [`ask_order`]): gateways of this zone ranked above this one, then
    /// the owners of other zones ranked above it; each must be named and
    /// have a peer endpoint. The upstream is always the last resort.
    fn plan(&self, image: &ImageName, digest: &Digest) -> VecDeque<Hop> {
        let key = customs_fleet::rendezvous::blob_key(image.registry.as_str(), &digest.to_string());
        let mut live = self.gateways.live();
        // Our own record as Redis has it, whatever it says, is replaced by
        // what we know of ourselves.
        live.retain(|m| m.id != self.me);
        live.push(customs_fleet::Member {
            id: self.me.clone(),
            role: customs_fleet::MemberRole::Gateway,
            endpoints: Default::default(),
            zone: self.zone.clone(),
            expires_at: 0,
        });
        let mut plan = VecDeque::new();
        for m in ask_order(&key, live, &self.me) {
            let Some(base) = m.endpoints.get(UPLOAD_ENDPOINT) else {
                continue;
            };
            match self.client(&m.id, base) {
                Ok(c) => plan.push_back(Hop::Gateway(c)),
                Err(e) => {
                    tracing::warn!(member = %m.id, endpoint = %base, error = %e, "fleet gateway unusable; skipped")
                }
            }
        }
        plan.push_back(Hop::Upstream);
        plan
    }

    /// Whether this gateway ranks first for `digest` of `image` among the
    /// live gateways it can route to (it fetches from the upstream itself).
    pub fn owns(&self, image: &ImageName, digest: &Digest) -> bool {
        matches!(self.plan(image, digest).front(), Some(Hop::Upstream))
    }

    fn client(&self, id: &MemberId, base: &str) -> Result<Arc<RegistryClient>, String> {
        let key = (id.clone(), base.to_owned());
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let url = url::Url::parse(base).map_err(|e| e.to_string())?;
        if url.scheme() != "https" || !url.path().trim_end_matches('/').is_empty() {
            return Err("not an https://host:port endpoint".into());
        }
        let tls = self
            .identity
            .client_config_for_named(Role::Gateway, id.as_str())
            .map_err(|e| e.to_string())?;
        let c = Arc::new(
            RegistryClient::fleet_member(
                base.trim_end_matches('/').to_owned(),
                format!("fleet gateway {id}"),
                tls,
                self.timeouts,
            )
            .map_err(|e| e.to_string())?,
        );
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, c.clone());
        Ok(c)
    }
}

/// Whom gateway `me` asks for the blob of `key`, in order, among `live`
/// (which includes `me`). Members are ranked by rendezvous hashing; a zone's
/// owner is its best-ranked member. First the members of `me`'s zone ranked
/// above it (its zone's owner first), then the owners of other zones ranked
/// above it. So only a zone's owner fetches from another zone (one copy per
/// zone), only the best-ranked zone owner fetches from the upstream, and
/// every hop goes to a better-ranked member: requests never loop. Without
/// zones (all empty) this is every member ranked above `me`.
fn ask_order(
    key: &[u8],
    live: Vec<customs_fleet::Member>,
    me: &MemberId,
) -> Vec<customs_fleet::Member> {
    let ranked = customs_fleet::rendezvous::ranked(key, live, |m| m.id.as_str());
    let Some(at) = ranked.iter().position(|m| m.id == *me) else {
        return Vec::new();
    };
    let my_zone = ranked[at].zone.clone();
    let above = &ranked[..at];
    let mut order: Vec<customs_fleet::Member> = above
        .iter()
        .filter(|m| m.zone == my_zone)
        .cloned()
        .collect();
    let mut zones_seen = std::collections::HashSet::new();
    zones_seen.insert(my_zone);
    for m in above {
        // The first member seen of a zone is its owner.
        if zones_seen.insert(m.zone.clone()) {
            order.push(m.clone());
        }
    }
    order
}

/// One place a blob can come from.
enum Hop {
    Gateway(Arc<RegistryClient>),
    Upstream,
}

/// What a (re)opening needs.
#[derive(Clone)]
struct Fetch {
    upstreams: Arc<Upstreams>,
    image: ImageName,
    digest: Digest,
    size: u64,
    via: Option<Digest>,
    from_fleet: Arc<AtomicU64>,
}

impl Fetch {
    /// Opens the bytes from `from` on at the first hop that answers; a hop
    /// that cannot be reached or fails (5xx, timeout) passes to the next,
    /// a refusal (not found, denied, wrong size) ends the fetch.
    async fn open(&self, plan: &mut VecDeque<Hop>, from: u64) -> Result<ByteStream, FetchFailure> {
        loop {
            let Some(hop) = plan.pop_front() else {
                return Err(FetchFailure::new(
                    FetchFailureKind::Unavailable,
                    format!("no gateway of the fleet could send {}", self.digest),
                ));
            };
            let opened = match &hop {
                Hop::Upstream => {
                    self.upstreams
                        .open_blob(&self.image, &self.digest, Some(self.size), from)
                        .await
                }
                Hop::Gateway(c) => self.open_at_gateway(c, from).await,
            };
            match opened {
                Ok(s) => return Ok(s),
                Err(f) if f.kind == FetchFailureKind::Unavailable && !plan.is_empty() => {
                    tracing::warn!(digest = %self.digest, from, error = %f.message, "blob source failed; asking the next in the fleet's order");
                }
                Err(f) => return Err(f),
            }
        }
    }

    async fn open_at_gateway(
        &self,
        c: &RegistryClient,
        from: u64,
    ) -> Result<ByteStream, FetchFailure> {
        let repo = &self.image.repository;
        let ns = self.image.registry.as_str();
        let blob_path = format!("/v2/{}/blobs/{}?ns={ns}", repo.as_str(), self.digest);
        tracing::info!(image = %self.image, digest = %self.digest, owner = c.host(), from, "fetching blob from its owner in the fleet");
        let mut resp = c.get_from(repo, &blob_path, "*/*", from).await?;
        if resp.status() == StatusCode::NOT_FOUND
            && let Some(via) = &self.via
        {
            // The owner has not admitted the manifest yet: asking for it by
            // digest makes it decide (and bind the blob) itself.
            drop(resp);
            let m_path = format!("/v2/{}/manifests/{via}?ns={ns}", repo.as_str());
            let m = c
                .get(repo, &m_path, &MANIFEST_MEDIA_TYPES.join(", "))
                .await?;
            if m.status() != StatusCode::OK {
                return Err(c.failure(m, "manifest").await);
            }
            c.read_capped(m, MAX_MANIFEST_BYTES, "manifest").await?;
            resp = c.get_from(repo, &blob_path, "*/*", from).await?;
        }
        if !(resp.status() == StatusCode::OK
            || (from > 0 && resp.status() == StatusCode::PARTIAL_CONTENT))
        {
            let mut f = c.failure(resp, "blob").await;
            // A gateway of the fleet that lacks the blob for us is not a
            // verdict on it: the next one (or the upstream) is asked.
            if f.kind == FetchFailureKind::NotFound && self.via.is_none() {
                f.kind = FetchFailureKind::Unavailable;
            }
            return Err(f);
        }
        check_resumed(&resp, from, self.size, c.host())?;
        let counted = self.from_fleet.clone();
        Ok(Box::pin(c.idle_bounded_stream(resp).inspect(move |b| {
            if let Ok(b) = b {
                counted.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
        })))
    }
}

/// The bytes of a blob from `plan`, resuming at the next hop where one
/// breaks off mid-stream. Ends with an error only when the last hop fails.
fn resuming(fetch: Fetch, plan: VecDeque<Hop>, first: ByteStream) -> ByteStream {
    struct State {
        fetch: Fetch,
        plan: VecDeque<Hop>,
        current: ByteStream,
        offset: u64,
    }
    let state = State {
        fetch,
        plan,
        current: first,
        offset: 0,
    };
    Box::pin(futures_util::stream::unfold(
        Some(state),
        |state| async move {
            let mut st = state?;
            loop {
                match st.current.next().await {
                    Some(Ok(b)) => {
                        st.offset += b.len() as u64;
                        return Some((Ok(b), Some(st)));
                    }
                    None => return None,
                    Some(Err(e)) if !st.plan.is_empty() && st.offset < st.fetch.size => {
                        tracing::warn!(digest = %st.fetch.digest, offset = st.offset, error = %e, "blob transfer broke off; resuming with the next in the fleet's order");
                        match st.fetch.open(&mut st.plan, st.offset).await {
                            Ok(next) => st.current = next,
                            Err(f) => {
                                return Some((Err(std::io::Error::other(f.message)), None));
                            }
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), None)),
                }
            }
        },
    ))
}

impl Source for FleetSource {
    async fn manifest(
        &self,
        image: &ImageName,
        reference: &Reference,
    ) -> Result<FetchedManifest, FetchFailure> {
        self.upstreams.manifest(image, reference).await
    }

    fn blob(
        &self,
        image: &ImageName,
        digest: &Digest,
    ) -> impl std::future::Future<Output = Result<ByteStream, FetchFailure>> + Send + 'static {
        self.upstreams.blob(image, digest)
    }

    fn blob_body(
        &self,
        image: &ImageName,
        digest: &Digest,
        size: u64,
    ) -> impl std::future::Future<Output = Result<SourceBody, FetchFailure>> + Send + 'static {
        self.blob_body_via(image, digest, size, None)
    }

    fn blob_body_via(
        &self,
        image: &ImageName,
        digest: &Digest,
        size: u64,
        via: Option<&Digest>,
    ) -> impl std::future::Future<Output = Result<SourceBody, FetchFailure>> + Send + 'static {
        let routed = self
            .owners
            .as_ref()
            .map(|o| (o.plan(image, digest), o.from_fleet.clone()));
        let fetch = Fetch {
            upstreams: self.upstreams.clone(),
            image: image.clone(),
            digest: digest.clone(),
            size,
            via: via.cloned(),
            from_fleet: routed.as_ref().map(|(_, c)| c.clone()).unwrap_or_default(),
        };
        async move {
            let mut plan = match routed {
                Some((plan, _)) => plan,
                None => VecDeque::from([Hop::Upstream]),
            };
            let first = fetch.open(&mut plan, 0).await?;
            Ok(SourceBody::Stream(resuming(fetch, plan, first)))
        }
    }

    async fn blob_size(&self, image: &ImageName, digest: &Digest) -> Result<u64, FetchFailure> {
        self.upstreams.blob_size(image, digest).await
    }
}

/// The live gateways and schedulers this gateway sees in Redis: served to
/// peers as `GET /customs/v1/fleet` (they never talk to Redis) and fed to
/// its own seed's scheduler set.
#[derive(Clone)]
pub struct FleetViews {
    /// Live gateways.
    pub gateways: Arc<MemberView>,
    /// Live schedulers.
    pub schedulers: Arc<MemberView>,
}

impl FleetViews {
    /// The fleet document: members with the endpoint each role is reached
    /// at (`upload` for gateways, `grpc` for schedulers); members without
    /// one are left out.
    pub fn doc(&self) -> customs_swarm::members::FleetDoc {
        use customs_swarm::members::{FleetDoc, GatewayEntry, SchedulerEntry};
        FleetDoc {
            gateways: self
                .gateways
                .live()
                .into_iter()
                .filter_map(|m| {
                    Some(GatewayEntry {
                        upload: m.endpoints.get(UPLOAD_ENDPOINT)?.clone(),
                        id: m.id.to_string(),
                        zone: m.zone.clone(),
                    })
                })
                .collect(),
            schedulers: self
                .schedulers
                .live()
                .into_iter()
                .filter_map(|m| {
                    Some(SchedulerEntry {
                        grpc: m.endpoints.get("grpc")?.clone(),
                        id: m.id.to_string(),
                    })
                })
                .collect(),
        }
    }

    /// Keeps `schedulers` (the seed's) on the live set until `shutdown`.
    pub async fn feed(
        self,
        schedulers: Arc<customs_swarm::members::Schedulers>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(customs_fleet::view::REFRESH);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            schedulers.learn(&self.doc());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, zone: &str) -> customs_fleet::Member {
        customs_fleet::Member {
            id: id.parse().unwrap(),
            role: customs_fleet::MemberRole::Gateway,
            endpoints: Default::default(),
            zone: zone.into(),
            expires_at: 0,
        }
    }

    fn ids(v: &[customs_fleet::Member]) -> Vec<String> {
        v.iter().map(|m| m.id.to_string()).collect()
    }

    #[test]
    fn without_zones_every_better_ranked_gateway_is_asked_in_order() {
        let all: Vec<_> = ["g1", "g2", "g3", "g4"]
            .iter()
            .map(|i| member(i, ""))
            .collect();
        let ranked = customs_fleet::rendezvous::ranked(b"k", all.clone(), |m| m.id.as_str());
        let last = ranked.last().unwrap().id.clone();
        assert_eq!(ids(&ask_order(b"k", all.clone(), &last)), ids(&ranked[..3]));
        assert!(
            ask_order(b"k", all, &ranked[0].id).is_empty(),
            "the owner asks nobody"
        );
    }

    #[test]
    fn with_zones_only_zone_owners_cross_zones_and_requests_never_loop() {
        let all: Vec<_> = (0..9)
            .map(|i| member(&format!("g{i}"), ["a", "b", "c"][i % 3]))
            .collect();
        for k in 0..200u32 {
            let key = k.to_be_bytes();
            let ranked = customs_fleet::rendezvous::ranked(&key, all.clone(), |m| m.id.as_str());
            let pos = |id: &MemberId| ranked.iter().position(|m| m.id == *id).unwrap();
            let zone_owner = |z: &str| ranked.iter().find(|m| m.zone == z).unwrap().id.clone();
            let mut upstream_fetchers = 0;
            for m in &all {
                let order = ask_order(&key, all.clone(), &m.id);
                // Every hop goes to a better-ranked gateway: no cycles.
                assert!(order.iter().all(|o| pos(&o.id) < pos(&m.id)));
                match order.first() {
                    None => upstream_fetchers += 1,
                    // A gateway first asks its own zone's owner, unless it
                    // is that owner; then another zone's owner.
                    Some(first) if m.id != zone_owner(&m.zone) => {
                        assert_eq!(first.id, zone_owner(&m.zone));
                    }
                    Some(first) => {
                        assert_ne!(first.zone, m.zone);
                        assert_eq!(first.id, zone_owner(&first.zone));
                    }
                }
            }
            assert_eq!(upstream_fetchers, 1, "one upstream fetch for the fleet");
        }
    }
}
