//! The scheduler's gRPC service. Who may call what comes from the caller's
//! mTLS certificate: only gateways register tasks; a peer may only speak
//! for the peer id its certificate names.

use crate::state::{BlockOutcome, SchedulerState};
use customs_protocol::Digest;
use customs_protocol::piece_manifest::{SignedPieceManifest, TrustedGatewayKeys};
use customs_protocol::scheduler_proto as pb;
use customs_protocol::scheduler_proto::scheduler_server::{Scheduler, SchedulerServer};
use customs_store::audit::AuditLog;
use customs_tls::{Role, TlsIdentity, has_role, is_named};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// The service.
pub struct SchedulerService {
    state: Mutex<SchedulerState>,
    /// Random per process: tells peers this scheduler forgot their pieces.
    instance: String,
    keys: TrustedGatewayKeys,
    audit: Option<AuditLog>,
}

impl SchedulerService {
    /// A scheduler trusting piece manifests signed by `keys`.
    pub fn new(keys: TrustedGatewayKeys, audit: Option<AuditLog>) -> Self {
        let mut id = [0u8; 8];
        let _ = getrandom::fill(&mut id);
        SchedulerService {
            state: Mutex::default(),
            instance: id.iter().map(|b| format!("{b:02x}")).collect(),
            keys,
            audit,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SchedulerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn caller_has<T>(
    req: &Request<T>,
    check: impl Fn(&rustls_cert::CertificateDer<'static>) -> bool,
) -> bool {
    req.peer_certs()
        .is_some_and(|c| c.first().is_some_and(check))
}

mod rustls_cert {
    pub use tonic::transport::CertificateDer;
}

fn require_peer<T>(req: &Request<T>, peer_id: &str) -> Result<(), Status> {
    if caller_has(req, |c| {
        (has_role(c, Role::Peer) || has_role(c, Role::Gateway)) && is_named(c, peer_id)
    }) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "the client certificate does not name peer {:?}",
            peer_id.chars().take(64).collect::<String>()
        )))
    }
}

fn parse_digest(s: &str) -> Result<Digest, Status> {
    s.parse()
        .map_err(|e| Status::invalid_argument(format!("blob digest: {e}")))
}

fn to_signed(m: Option<pb::SignedPieceManifest>) -> Result<SignedPieceManifest, Status> {
    let m = m.ok_or_else(|| Status::invalid_argument("missing piece manifest"))?;
    Ok(SignedPieceManifest {
        payload: m.payload,
        signature: m.signature,
        key_id: m.key_id,
    })
}

fn to_pb(m: &SignedPieceManifest) -> pb::SignedPieceManifest {
    pb::SignedPieceManifest {
        payload: m.payload.clone(),
        signature: m.signature.clone(),
        key_id: m.key_id.clone(),
    }
}

#[tonic::async_trait]
impl Scheduler for SchedulerService {
    async fn register_task(
        &self,
        req: Request<pb::RegisterTaskRequest>,
    ) -> Result<Response<pb::RegisterTaskResponse>, Status> {
        if !caller_has(&req, |c| has_role(c, Role::Gateway)) {
            tracing::warn!("task registration refused: caller is not a gateway");
            return Err(Status::permission_denied("only gateways register tasks"));
        }
        let signed = to_signed(req.into_inner().manifest)?;
        // The blob the manifest claims is checked against itself here; the
        // signature is what binds it.
        let claimed: serde_json::Value = serde_json::from_slice(&signed.payload)
            .map_err(|e| Status::invalid_argument(format!("piece manifest: {e}")))?;
        let blob = parse_digest(claimed["blob"].as_str().unwrap_or_default())?;
        let verified = self
            .keys
            .verify(&signed, &blob)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(blob = %blob, pieces = verified.manifest().piece_count(), "task registered");
        self.state().register(verified);
        Ok(Response::new(pb::RegisterTaskResponse {}))
    }

    async fn list_peers(
        &self,
        req: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersResponse>, Status> {
        if !caller_has(&req, |c| has_role(c, Role::Gateway)) {
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
        require_peer(&req, &info.peer_id)?;
        if info.seed && !caller_has(&req, |c| has_role(c, Role::Gateway)) {
            return Err(Status::permission_denied("only gateways announce as seeds"));
        }
        if info.upload_addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(Status::invalid_argument("upload_addr must be host:port"));
        }
        self.state().announce(info, Instant::now());
        Ok(Response::new(pb::AnnouncePeerResponse {
            instance: self.instance.clone(),
        }))
    }

    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        require_peer(&req, &req.get_ref().peer_id)?;
        let r = req.into_inner();
        let blob = parse_digest(&r.blob_digest)?;
        let (m, parents, seed_hints) = self
            .state()
            .task_for(
                &blob,
                &r.peer_id,
                r.seed_hints_wanted as usize,
                Instant::now(),
            )
            .ok_or_else(|| Status::not_found(format!("no admitted task for {blob}")))?;
        Ok(Response::new(pb::GetTaskResponse {
            manifest: Some(to_pb(m.signed())),
            parents,
            seed_hints,
        }))
    }

    async fn report_pieces(
        &self,
        req: Request<pb::ReportPiecesRequest>,
    ) -> Result<Response<pb::ReportPiecesResponse>, Status> {
        require_peer(&req, &req.get_ref().peer_id)?;
        let r = req.into_inner();
        let blob = parse_digest(&r.blob_digest)?;
        if !self.state().report_pieces(&r.peer_id, &blob, &r.pieces) {
            return Err(Status::not_found(format!("no admitted task for {blob}")));
        }
        Ok(Response::new(pb::ReportPiecesResponse {}))
    }

    async fn report_bad_piece(
        &self,
        req: Request<pb::ReportBadPieceRequest>,
    ) -> Result<Response<pb::ReportBadPieceResponse>, Status> {
        require_peer(&req, &req.get_ref().peer_id)?;
        let r = req.into_inner();
        let outcome = self
            .state()
            .report_bad(&r.peer_id, &r.parent_id, Instant::now());
        let global = outcome == BlockOutcome::Global;
        tracing::warn!(reporter = %r.peer_id, parent = %r.parent_id, blob = %r.blob_digest, piece = r.piece, global, "bad piece reported; parent blocklisted");
        if let Some(audit) = &self.audit {
            let event = serde_json::json!({
                "reporter": r.peer_id, "parent": r.parent_id, "blob": r.blob_digest,
                "piece": r.piece, "detail": r.detail.chars().take(256).collect::<String>(),
                "blocklisted": if global { "global" } else { "for-reporter" },
            });
            if let Err(e) = audit.write("bad_piece", &event).await {
                tracing::error!(error = %e, "audit write failed for a bad-piece report");
            }
        }
        Ok(Response::new(pb::ReportBadPieceResponse {
            parent_blocklisted: true,
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

/// Serves the scheduler over mTLS on a bound listener until `shutdown`.
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
) -> Result<(), ServeError> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "scheduler serving gRPC over mTLS");
    }
    let incoming = customs_tls::tls_incoming(
        listener,
        identity.grpc_server_config()?,
        customs_tls::ListenerLimits::default(),
        Arc::default(),
        shutdown.clone(),
    );
    tonic::transport::Server::builder()
        .timeout(RPC_TIMEOUT)
        .concurrency_limit_per_connection(CONCURRENCY_PER_CONNECTION)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(customs_tls::TLS_HANDSHAKE_TIMEOUT))
        .add_service(SchedulerServer::from_arc(service))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;
    Ok(())
}
