//! The scheduler's gRPC service. Who may call what comes from the caller's
//! mTLS certificate: only gateways register tasks; a peer speaks only for
//! the one node id its certificate names (its identity SAN, never its role
//! SAN), and only gateways speak for the seed.

use crate::state::{AnnounceError, BadPieceSummary, PiecesError, ReportOutcome, SchedulerState};
use customs_protocol::Digest;
use customs_protocol::peer_id::PeerId;
use customs_protocol::piece_manifest::{
    FetchId, SignedPieceManifest, Statement, TrustedGatewayKeys, unix_now,
};
use customs_protocol::scheduler_proto as pb;
use customs_protocol::scheduler_proto::scheduler_server::{Scheduler, SchedulerServer};
use customs_store::audit::AuditLog;
use customs_tls::{Role, TlsIdentity, has_role, is_named};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::CertificateDer;
use tonic::{Request, Response, Status};
use verdicts::{Question, Verdicts};

/// The id gateways announce under as seed (`customs_gateway::seed::SEED_ID`).
/// Only a certificate with the gateway role speaks for it: every gateway
/// replica is "the seed", and a gateway certificate may register content
/// anyway, so the role is the whole authority here.
pub const SEED_PEER_ID: &str = "gateway";

/// How often bad-piece reports are written as one aggregate audit event
/// (the gateway aggregates cache hits per minute too).
pub const BAD_PIECE_AGGREGATE_INTERVAL: Duration = Duration::from_secs(60);

/// Longest `detail` of a bad-piece report kept (logs and events).
pub const MAX_DETAIL_CHARS: usize = 256;

/// The service.
pub struct SchedulerService {
    state: Mutex<SchedulerState>,
    /// Random per process: tells peers this scheduler forgot their pieces.
    instance: String,
    keys: TrustedGatewayKeys,
    audit: Option<AuditLog>,
    aggregate_interval: Duration,
    /// Certificate checks already made.
    verdicts: Verdicts,
}

/// The `bad_piece` aggregate audit event.
#[derive(Serialize)]
struct BadPieceEvent {
    interval_secs: u64,
    #[serde(flatten)]
    summary: BadPieceSummary,
}

/// The `peer_blocklisted` audit event: a parent cut out for every peer.
#[derive(Serialize)]
struct BlocklistEvent<'a> {
    parent: &'a PeerId,
    /// The report that crossed the threshold.
    reporter: &'a PeerId,
    blob: &'a Digest,
    piece: u32,
    detail: String,
    blocklisted_for_secs: u64,
}

impl SchedulerService {
    /// A scheduler trusting piece manifests signed by `keys`, writing
    /// bad-piece counts to `audit` once per `aggregate_interval` (see
    /// [`SchedulerService::aggregate_loop`]; [`BAD_PIECE_AGGREGATE_INTERVAL`]
    /// is the default).
    pub fn new(
        keys: TrustedGatewayKeys,
        audit: Option<AuditLog>,
        aggregate_interval: Duration,
    ) -> Self {
        let mut id = [0u8; 8];
        let _ = getrandom::fill(&mut id);
        SchedulerService {
            state: Mutex::default(),
            instance: id.iter().map(|b| format!("{b:02x}")).collect(),
            keys,
            audit,
            aggregate_interval,
            verdicts: Verdicts::default(),
        }
    }

    /// Whether the caller's certificate holds exactly `role`.
    fn caller_is<T>(&self, req: &Request<T>, role: Role) -> bool {
        req.peer_certs().is_some_and(|c| {
            c.first().is_some_and(|cert| {
                self.verdicts
                    .answer(cert, Question::HasRole(role.into()), |c, _| {
                        has_role(c, role)
                    })
            })
        })
    }

    /// Whether the caller holds the gateway role (only gateways are seeds).
    fn caller_is_gateway<T>(&self, req: &Request<T>) -> bool {
        self.caller_is(req, Role::Gateway)
    }

    /// Parses the id a request speaks for and checks the caller may.
    fn require_peer<T>(&self, req: &Request<T>, peer_id: &str) -> Result<PeerId, Status> {
        let id = PeerId::parse(peer_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let allowed = req.peer_certs().is_some_and(|c| {
            c.first().is_some_and(|cert| {
                self.verdicts
                    .answer(cert, Question::SpeaksFor(id.clone()), |c, _| {
                        may_speak_for(c, &id)
                    })
            })
        });
        if allowed {
            Ok(id)
        } else {
            tracing::warn!(peer = %id, "request refused: the client certificate does not name this peer");
            Err(Status::permission_denied(format!(
                "the client certificate does not name peer {id:?}"
            )))
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SchedulerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Judges one bad-piece report from `reporter` (already authenticated)
    /// and returns whether the parent is now blocklisted. Only a parent
    /// becoming blocklisted for every peer is written to the audit log at
    /// once (durable before the answer); everything else is tallied for
    /// the next aggregate event.
    async fn bad_piece(
        &self,
        reporter: &PeerId,
        parent: &PeerId,
        blob: &Digest,
        piece: u32,
        detail: &str,
    ) -> Result<bool, Status> {
        let outcome = self
            .state()
            .report_bad(reporter, parent, blob, piece, Instant::now());
        let detail: String = detail.chars().take(MAX_DETAIL_CHARS).collect();
        match outcome {
            ReportOutcome::Ignored(why) => {
                tracing::debug!(%reporter, %parent, %blob, piece, ?why, "bad-piece report ignored");
            }
            ReportOutcome::ForReporter { new: false } => {
                tracing::debug!(%reporter, %parent, %blob, piece, "bad-piece report (parent already blocklisted for the reporter)");
            }
            ReportOutcome::ForReporter { new: true } => {
                tracing::warn!(%reporter, %parent, %blob, piece, %detail, "bad piece reported; parent blocklisted for the reporter");
            }
            ReportOutcome::Global => {
                tracing::warn!(%reporter, %parent, %blob, piece, %detail, "bad pieces reported by several peers; parent blocklisted for every peer");
                if let Some(audit) = &self.audit {
                    let event = BlocklistEvent {
                        parent,
                        reporter,
                        blob,
                        piece,
                        detail,
                        blocklisted_for_secs: crate::state::BLOCKLIST_FOR.as_secs(),
                    };
                    if let Err(e) = audit.write("peer_blocklisted", &event).await {
                        tracing::error!(error = %e, "audit write failed for a global blocklisting");
                        return Err(Status::internal("the blocklisting could not be recorded"));
                    }
                }
            }
        }
        Ok(outcome.blocklisted())
    }

    /// Once per interval, sweeps aged-out state and writes the bad-piece
    /// reports counted since the last time as one `bad_piece` audit event
    /// (nothing when there were none), so reports never turn into one
    /// durable write each. Writes a last one when `shutdown` fires.
    pub async fn aggregate_loop(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let stop = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = tokio::time::sleep(self.aggregate_interval) => false,
            };
            let summary = {
                let mut s = self.state();
                s.sweep(Instant::now());
                s.take_bad_piece_summary()
            };
            if let Some(summary) = summary {
                tracing::warn!(
                    counted = summary.counted.iter().map(|c| c.reports).sum::<u64>()
                        + summary.other_counted,
                    ignored_reporters = summary.ignored.len(),
                    "bad-piece reports in the last interval"
                );
                if let Some(audit) = &self.audit {
                    let event = BadPieceEvent {
                        interval_secs: self.aggregate_interval.as_secs(),
                        summary,
                    };
                    if let Err(e) = audit.write("bad_piece", &event).await {
                        tracing::error!(error = %e, "bad-piece aggregate audit event could not be written");
                    }
                }
            }
            if stop {
                return;
            }
        }
    }
}

/// Whether a certificate may speak for `id`: the seed id needs the gateway
/// role; any other id needs the peer or gateway role and the identity SAN
/// `<id>.node.customs.internal` (`customs_tls::is_named`), which no role SAN
/// can satisfy.
pub fn may_speak_for(cert: &CertificateDer<'_>, id: &PeerId) -> bool {
    if id.as_str() == SEED_PEER_ID {
        return has_role(cert, Role::Gateway);
    }
    // A gateway of a fleet seeds under its own member id, named by its
    // certificate like a peer's.
    (has_role(cert, Role::Peer) || has_role(cert, Role::Gateway)) && is_named(cert, id.as_str())
}

fn parse_digest(s: &str) -> Result<Digest, Status> {
    s.parse()
        .map_err(|e| Status::invalid_argument(format!("blob digest: {e}")))
}

fn to_signed(m: Option<pb::SignedPieceManifest>) -> Result<SignedPieceManifest, Status> {
    m.map(SignedPieceManifest::from)
        .ok_or_else(|| Status::invalid_argument("missing piece manifest"))
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    async fn register_task(
        &self,
        req: Request<pb::RegisterTaskRequest>,
    ) -> Result<Response<pb::RegisterTaskResponse>, Status> {
        use tracing::Instrument as _;
        let span = customs_runtime::trace_context::grpc_server_span(
            "RegisterTask",
            &req.metadata().clone().into_headers(),
        );
        self.register_task_in(req).instrument(span).await
    }

    async fn withdraw_task(
        &self,
        req: Request<pb::WithdrawTaskRequest>,
    ) -> Result<Response<pb::WithdrawTaskResponse>, Status> {
        if !self.caller_is(&req, Role::Gateway) {
            return Err(Status::permission_denied("only gateways withdraw tasks"));
        }
        let r = req.into_inner();
        let blob = parse_digest(&r.blob_digest)?;
        let fetch: FetchId = r.fetch_id.parse().map_err(
            |e: customs_protocol::piece_manifest::PieceManifestError| {
                Status::invalid_argument(e.to_string())
            },
        )?;
        if self.state().withdraw(&blob, &fetch) {
            tracing::warn!(%blob, %fetch, "provisional task withdrawn: the gateway's fetch failed");
        }
        Ok(Response::new(pb::WithdrawTaskResponse {}))
    }

    async fn list_peers(
        &self,
        req: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersResponse>, Status> {
        if !self.caller_is(&req, Role::Gateway) {
            return Err(Status::permission_denied("only gateways list peers"));
        }
        let peers = self.state().live_peers(Instant::now());
        Ok(Response::new(pb::ListPeersResponse { peers }))
    }

    async fn announce_peer(
        &self,
        req: Request<pb::AnnouncePeerRequest>,
    ) -> Result<Response<pb::AnnouncePeerResponse>, Status> {
        let info = req
            .get_ref()
            .peer
            .clone()
            .ok_or_else(|| Status::invalid_argument("missing peer"))?;
        let id = self.require_peer(&req, &info.peer_id)?;
        if info.seed != self.caller_is_gateway(&req) {
            return Err(Status::permission_denied(
                "only gateways announce as seeds, and gateways only as seeds",
            ));
        }
        match self.state().announce(&id, info, Instant::now()) {
            Ok(()) => {}
            Err(e @ AnnounceError::TableFull) => {
                tracing::warn!(peer = %id, "announcement refused: peer table full");
                return Err(Status::resource_exhausted(e.to_string()));
            }
            Err(e) => return Err(Status::invalid_argument(e.to_string())),
        }
        Ok(Response::new(pb::AnnouncePeerResponse {
            instance: self.instance.clone(),
        }))
    }

    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let id = self.require_peer(&req, &req.get_ref().peer_id)?;
        let r = req.into_inner();
        let blob = parse_digest(&r.blob_digest)?;
        let mut state = self.state();
        let provisional_task = state
            .task_statement(&blob)
            .is_some_and(|m| matches!(m, Statement::Provisional(_)));
        if provisional_task && !r.accepts_provisional {
            // A peer that cannot take provisional statements asks the
            // gateway, which answers it with the final manifest.
            return Err(Status::not_found(format!(
                "{blob} is still being fetched; ask the gateway"
            )));
        }
        let (m, parents, seed_hints) = state
            .task_for_in(
                &blob,
                &id,
                &r.zone,
                r.seed_hints_wanted as usize,
                Instant::now(),
            )
            .ok_or_else(|| Status::not_found(format!("no admitted task for {blob}")))?;
        drop(state);
        // A peer holding a provisional statement gets the final manifest, or
        // a newer provisional one (of its fetch, or of a newer fetch), as
        // soon as there is one.
        let newer = r.holds_provisional
            && match m.as_ref() {
                Statement::Final(_) => true,
                Statement::Provisional(p) => {
                    let c = p.content();
                    c.fetch.as_str() != r.provisional_fetch
                        || (c.pieces.len(), c.signed_at)
                            > (r.provisional_pieces as usize, r.provisional_signed_at)
                }
            };
        Ok(Response::new(pb::GetTaskResponse {
            manifest: (!r.omit_manifest || newer).then(|| m.signed().into()),
            parents,
            seed_hints,
        }))
    }

    async fn report_pieces(
        &self,
        req: Request<pb::ReportPiecesRequest>,
    ) -> Result<Response<pb::ReportPiecesResponse>, Status> {
        let id = self.require_peer(&req, &req.get_ref().peer_id)?;
        let r = req.into_inner();
        let blob = parse_digest(&r.blob_digest)?;
        let fetch: Option<FetchId> = if r.fetch_id.is_empty() {
            None
        } else {
            Some(r.fetch_id.parse().map_err(
                |e: customs_protocol::piece_manifest::PieceManifestError| {
                    Status::invalid_argument(e.to_string())
                },
            )?)
        };
        match self
            .state()
            .report_pieces(&id, &blob, &r.pieces, fetch.as_ref())
        {
            Ok(()) => Ok(Response::new(pb::ReportPiecesResponse {})),
            Err(e @ PiecesError::UnknownTask(_)) => Err(Status::not_found(e.to_string())),
            Err(e @ PiecesError::UnknownPeer(_)) => Err(Status::failed_precondition(e.to_string())),
            Err(e @ PiecesError::TooMany { .. }) => Err(Status::invalid_argument(e.to_string())),
        }
    }

    async fn report_bad_piece(
        &self,
        req: Request<pb::ReportBadPieceRequest>,
    ) -> Result<Response<pb::ReportBadPieceResponse>, Status> {
        // Gateways download no pieces; one that could report under its
        // member id and as `gateway` would count as two reporters.
        if self.caller_is_gateway(&req) {
            return Err(Status::permission_denied(
                "gateways do not report bad pieces",
            ));
        }
        let reporter = self.require_peer(&req, &req.get_ref().peer_id)?;
        let r = req.into_inner();
        let parent = PeerId::parse(&r.parent_id)
            .map_err(|e| Status::invalid_argument(format!("parent_id: {e}")))?;
        let blob = parse_digest(&r.blob_digest)?;
        let blocklisted = self
            .bad_piece(&reporter, &parent, &blob, r.piece, &r.detail)
            .await?;
        Ok(Response::new(pb::ReportBadPieceResponse {
            parent_blocklisted: blocklisted,
        }))
    }
}

/// Why the scheduler server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TLS or transport failure.
    #[error("scheduler transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] customs_tls::TlsError),
}

/// Longest a scheduler call may take. Every RPC is a small unary call
/// answered from memory (an audit write at most); 30 s is far beyond an
/// honest call and bounds what a stalled one holds.
pub const RPC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Calls one connection may have in flight. A peer runs a few downloads
/// at once and each makes one call at a time; 64 leaves room for bursts
/// and stops one connection from monopolising the service.
pub const CONCURRENCY_PER_CONNECTION: usize = 64;

/// HTTP/2 keep-alive ping interval: a dead peer's connection (and its slot
/// of the connection cap) is noticed within this plus the TLS handshake
/// timeout used as the ping's answer deadline.
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves the scheduler over mTLS on a bound listener until `shutdown`,
/// then lets open RPCs finish for up to `drain` (every RPC is bounded by
/// [`RPC_TIMEOUT`] anyway).
/// TLS is accepted here, not by tonic, so that every connection is bounded
/// like the other listeners: a handshake that does not finish within
/// [`customs_tls::TLS_HANDSHAKE_TIMEOUT`] is dropped and at most
/// [`customs_tls::MAX_CONNECTIONS`] are open at once (see
/// [`customs_tls::ListenerLimits`]).
pub async fn serve(
    listener: TcpListener,
    identity: &TlsIdentity,
    service: Arc<SchedulerService>,
    shutdown: CancellationToken,
    drain: std::time::Duration,
) -> Result<(), ServeError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "scheduler serving gRPC over mTLS");
    }
    let incoming = customs_tls::tls_incoming(
        listener,
        identity.grpc_server_config()?,
        customs_tls::ListenerLimits::default().with_drain(drain),
        Arc::default(),
        shutdown.clone(),
    );
    let served = tonic::transport::Server::builder()
        .timeout(RPC_TIMEOUT)
        .concurrency_limit_per_connection(CONCURRENCY_PER_CONNECTION)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(customs_tls::TLS_HANDSHAKE_TIMEOUT))
        .add_service(SchedulerServer::from_arc(service))
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    tokio::pin!(served);
    // tonic's graceful shutdown waits for every connection to close: the
    // drain deadline bounds it.
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        r = &mut served => r?,
        _ = deadline => tracing::warn!("scheduler connections still open at the drain deadline"),
    }
    Ok(())
}

impl SchedulerService {
    /// [`Scheduler::register_task`]'s work, inside its span.
    async fn register_task_in(
        &self,
        req: Request<pb::RegisterTaskRequest>,
    ) -> Result<Response<pb::RegisterTaskResponse>, Status> {
        if !self.caller_is(&req, Role::Gateway) {
            tracing::warn!("task registration refused: caller is not a gateway");
            return Err(Status::permission_denied("only gateways register tasks"));
        }
        // A gateway of a fleet names its seed id (its certificate must
        // name it); one outside a fleet seeds as `gateway` for every task.
        let seed = match req.get_ref().seed_id.as_str() {
            "" => None,
            id => Some(self.require_peer(&req, id)?),
        };
        let signed = to_signed(req.into_inner().manifest)?;
        // The blob the manifest claims is checked against itself here; the
        // signature is what binds it.
        let blob = signed
            .claimed_blob()
            .ok_or_else(|| Status::invalid_argument("piece manifest: no valid blob digest"))?;
        let verified = self
            .keys
            .verify_statement(&signed, &blob, unix_now())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (signed_pieces, fin) = (
            verified.pieces().len(),
            matches!(verified, Statement::Final(_)),
        );
        if self.state().register_from(verified, seed.as_ref()) {
            if fin {
                tracing::info!(blob = %blob, pieces = signed_pieces, "task registered");
            } else {
                tracing::debug!(blob = %blob, signed_pieces, "provisional task registered");
            }
        }
        Ok(Response::new(pb::RegisterTaskResponse {}))
    }
}

#[cfg(test)]
mod tests;
mod verdicts;
