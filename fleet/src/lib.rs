//! Shared fleet state in Redis (`--fleet-redis`): which gateways and
//! schedulers are alive (heartbeats with a TTL) and the preheat jobs any
//! gateway can create, poll and complete.
//!
//! Redis is not trusted with security. It holds no admission decision, blob
//! binding, signing key or credential; what is read back is validated like
//! any untrusted input (ids, sizes, JSON shapes) and a bad record is skipped
//! or reported, never acted on as a decision. The worst a writer to Redis
//! can do is delay or misroute work (SECURITY.md says what exactly).
//!
//! Peers never talk to Redis.

mod fleet_url;
pub mod jobs;
pub mod member;
pub use customs_protocol::rendezvous;
pub mod view;

pub use fleet_url::FleetUrl;
pub use member::spawn_heartbeat;
pub use member::{Member, MemberId, MemberRole};
pub use view::MemberView;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::time::Duration;

/// Longest any one Redis command may take before it counts as failed: a
/// stalled Redis delays jobs and membership by at most this, never a pull.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest the first connection may take at start.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Redis refused or could not be reached.
    #[error("fleet store (Redis) unavailable: {0}")]
    Unavailable(#[from] redis::RedisError),
    /// Redis did not answer in time.
    #[error("fleet store (Redis) did not answer within {}s", .0.as_secs())]
    Timeout(Duration),
    /// The CA file for `rediss://` could not be read.
    #[error("--fleet-redis-ca {path}: {source}")]
    Ca {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A record read back from Redis is not one Customs wrote.
    #[error("fleet store record {key} is malformed: {reason}")]
    Malformed {
        /// The Redis key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A connection to the fleet's Redis, shared by every task of a process
/// (the connection manager reconnects on its own).
#[derive(Clone)]
pub struct Fleet {
    conn: ConnectionManager,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet").finish_non_exhaustive()
    }
}

/// The key prefix of everything Customs keeps in Redis.
pub const KEY_PREFIX: &str = "customs:";

impl Fleet {
    /// Connects to `url`; `ca` is a PEM file of CAs trusted for `rediss://`
    /// (the system's roots otherwise).
    pub async fn connect(
        url: &FleetUrl,
        ca: Option<&std::path::Path>,
    ) -> Result<Fleet, FleetError> {
        let client = match ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| FleetError::Ca {
                    path: path.to_path_buf(),
                    source,
                })?;
                redis::Client::build_with_tls(
                    url.expose(),
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    },
                )?
            }
            None => redis::Client::open(url.expose())?,
        };
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(2);
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT,
            ConnectionManager::new_with_config(client, cfg),
        )
        .await
        .map_err(|_| FleetError::Timeout(CONNECT_TIMEOUT))??;
        Ok(Fleet { conn })
    }

    fn key(&self, rest: &str) -> String {
        format!("{KEY_PREFIX}{rest}")
    }

    /// Runs one command within [`COMMAND_TIMEOUT`].
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, FleetError> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async(&mut conn))
            .await
            .map_err(|_| FleetError::Timeout(COMMAND_TIMEOUT))?
            .map_err(FleetError::from)
    }

    /// Runs a pipeline within [`COMMAND_TIMEOUT`].
    async fn run_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, FleetError> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(COMMAND_TIMEOUT, pipe.query_async(&mut conn))
            .await
            .map_err(|_| FleetError::Timeout(COMMAND_TIMEOUT))?
            .map_err(FleetError::from)
    }
}

/// A fleet connection made on first use and retried on each use until it
/// succeeds: a process whose Redis is down at start still starts, serves
/// what needs no Redis, and joins the fleet once Redis answers.
#[derive(Debug)]
pub struct LazyFleet {
    url: FleetUrl,
    ca: Option<std::path::PathBuf>,
    cell: tokio::sync::OnceCell<Fleet>,
}

impl LazyFleet {
    /// A connection to `url` (with `ca` for `rediss://`), not made yet.
    pub fn new(url: FleetUrl, ca: Option<std::path::PathBuf>) -> Self {
        LazyFleet {
            url,
            ca,
            cell: tokio::sync::OnceCell::new(),
        }
    }

    /// The URL (password redacted when shown).
    pub fn url(&self) -> &FleetUrl {
        &self.url
    }

    /// The connection, made now if it was not yet.
    pub async fn get(&self) -> Result<&Fleet, FleetError> {
        self.cell
            .get_or_try_init(|| Fleet::connect(&self.url, self.ca.as_deref()))
            .await
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
