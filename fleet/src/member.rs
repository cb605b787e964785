//! Membership: each gateway and scheduler heartbeats with a TTL; a member
//! whose heartbeat expired is gone.
//!
//! Kept as a sorted set per role (member id scored by its expiry, Unix
//! seconds) and a hash of each member's endpoints. What Redis returns is
//! validated: a bogus id, an unparseable record, or an expiry beyond one
//! TTL from now (a forged "immortal" member) is skipped. No key material
//! lives here: gateway keys come from gateway-role certificates only.

use crate::{Fleet, FleetError, unix_now};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a heartbeat keeps a member alive (default of the fleet
/// heartbeat TTL): a dead member is noticed within this.
pub const MEMBER_TTL: Duration = Duration::from_secs(10);
/// Most members of one role read back (a flood of forged members is cut
/// here).
pub const MAX_MEMBERS: usize = 256;
/// Longest member id.
pub const MAX_ID_LEN: usize = 64;
/// Longest member record read back.
const MAX_RECORD_LEN: usize = 2048;

/// What a member is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberRole {
    /// A gateway (seed peer, policy gate).
    Gateway,
    /// A scheduler.
    Scheduler,
}

impl MemberRole {
    /// The role's name in keys and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Gateway => "gateway",
            MemberRole::Scheduler => "scheduler",
        }
    }
}

/// A member's id: `[a-z0-9._-]`, 1 to [`MAX_ID_LEN`] characters (a node
/// name, a pod name). Lowercase only: certificate names compare without
/// case, so `GW-1` and `gw-1` would be two members with one certificate,
/// and a forged alias of a gateway could make it ask itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct MemberId(String);

/// A member id that breaks the rules.
#[derive(Debug, thiserror::Error)]
#[error("member id {0:?}: 1-64 characters of a-z 0-9 . _ -")]
pub struct BadMemberId(pub String);

impl std::str::FromStr for MemberId {
    type Err = BadMemberId;
    fn from_str(s: &str) -> Result<Self, BadMemberId> {
        let ok = !s.is_empty()
            && s.len() <= MAX_ID_LEN
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
        if ok {
            Ok(MemberId(s.to_owned()))
        } else {
            Err(BadMemberId(s.chars().take(MAX_ID_LEN + 1).collect()))
        }
    }
}

impl<'de> Deserialize<'de> for MemberId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for MemberId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl MemberId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A member id when none is configured: the host name (else `fallback`)
/// and the member's port, since several members may share a host.
pub fn default_id(fallback: &str, port: u16) -> Result<MemberId, BadMemberId> {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    let host = if host.is_empty() { fallback } else { &host };
    format!("{host}-{port}").parse()
}

/// A live member and where it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its id.
    pub id: MemberId,
    /// Its role.
    pub role: MemberRole,
    /// Endpoints by name (`oci`, `api`, `upload`, `grpc`): informational
    /// for operators and for routing; every connection to one is still
    /// authenticated by its certificate's role.
    #[serde(default)]
    pub endpoints: std::collections::BTreeMap<String, String>,
    /// Its zone (`--zone`; empty: none). Gateways of one zone share blobs
    /// among themselves first, so at most one copy crosses into a zone.
    #[serde(default)]
    pub zone: String,
    /// When its heartbeat runs out (Unix seconds), as read back.
    #[serde(default)]
    pub expires_at: u64,
}

impl Fleet {
    fn members_key(&self, role: MemberRole) -> String {
        self.key(&format!("members:{}", role.as_str()))
    }
    fn info_key(&self, role: MemberRole) -> String {
        self.key(&format!("member-info:{}", role.as_str()))
    }

    /// Records `member` alive for `ttl` more; drops members that expired.
    pub async fn heartbeat(&self, member: &Member, ttl: Duration) -> Result<(), FleetError> {
        let now = unix_now();
        let expires = now + ttl.as_secs().max(1);
        let record = Member {
            expires_at: expires,
            ..member.clone()
        };
        let json = serde_json::to_string(&record).map_err(|e| FleetError::Malformed {
            key: member.id.to_string(),
            reason: e.to_string(),
        })?;
        let (zkey, hkey) = (self.members_key(member.role), self.info_key(member.role));
        let expired: Vec<String> = self
            .run(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&zkey)
                    .arg("-inf")
                    .arg(format!("({now}"))
                    .arg("LIMIT")
                    .arg(0)
                    .arg(MAX_MEMBERS),
            )
            .await?;
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg(&zkey)
            .arg(expires)
            .arg(member.id.as_str())
            .ignore()
            .cmd("HSET")
            .arg(&hkey)
            .arg(member.id.as_str())
            .arg(json)
            .ignore();
        if !expired.is_empty() {
            pipe.cmd("ZREM").arg(&zkey).arg(&expired).ignore();
            pipe.cmd("HDEL").arg(&hkey).arg(&expired).ignore();
        }
        self.run_pipe::<()>(&pipe).await
    }

    /// Removes `member` at once (a clean shutdown).
    pub async fn leave(&self, role: MemberRole, id: &MemberId) -> Result<(), FleetError> {
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM")
            .arg(self.members_key(role))
            .arg(id.as_str())
            .ignore()
            .cmd("HDEL")
            .arg(self.info_key(role))
            .arg(id.as_str())
            .ignore();
        self.run_pipe::<()>(&pipe).await
    }

    /// The live members of `role`, sorted by id. Records that are not
    /// Customs' own (bad id, bad JSON, wrong role, an expiry further than
    /// `ttl` ahead) are skipped with a warning.
    pub async fn members(
        &self,
        role: MemberRole,
        ttl: Duration,
    ) -> Result<Vec<Member>, FleetError> {
        let now = unix_now();
        let ids: Vec<(String, f64)> = self
            .run(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.members_key(role))
                    .arg(now)
                    .arg("+inf")
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(MAX_MEMBERS),
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
        let records: Vec<Option<Vec<u8>>> = self
            .run(redis::cmd("HMGET").arg(self.info_key(role)).arg(&names))
            .await?;
        let mut out = Vec::new();
        for ((id, score), record) in ids.iter().zip(records) {
            match validate(role, id, *score, record.as_deref(), now, ttl) {
                Ok(m) => out.push(m),
                Err(reason) => {
                    tracing::warn!(role = role.as_str(), member = %id.chars().take(80).collect::<String>(), %reason, "fleet member record skipped");
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out.dedup_by(|a, b| a.id == b.id);
        Ok(out)
    }
}

/// A member as read back, or why it is not one.
fn validate(
    role: MemberRole,
    id: &str,
    score: f64,
    record: Option<&[u8]>,
    now: u64,
    ttl: Duration,
) -> Result<Member, String> {
    let id: MemberId = id.parse().map_err(|e: BadMemberId| e.to_string())?;
    let record = record.ok_or("no record")?;
    if record.len() > MAX_RECORD_LEN {
        return Err(format!("record of {} bytes", record.len()));
    }
    let m: Member = serde_json::from_slice(record).map_err(|e| e.to_string())?;
    if m.id != id || m.role != role {
        return Err("record names another member".into());
    }
    if !score.is_finite() || score > (now + ttl.as_secs().max(1) + 1) as f64 || m.expires_at < now {
        return Err("expiry out of range".into());
    }
    Ok(m)
}

/// Heartbeats `member` every third of `ttl` until `shutdown`, then leaves.
/// A failed heartbeat is logged and retried: Redis being down only makes
/// this member invisible to the others, nothing else.
pub fn spawn_heartbeat(
    fleet: std::sync::Arc<crate::LazyFleet>,
    member: Member,
    ttl: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    customs_runtime::spawn(async move {
        let mut tick = tokio::time::interval(ttl / 3);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            let beat = match fleet.get().await {
                Ok(f) => f.heartbeat(&member, ttl).await,
                Err(e) => Err(e),
            };
            match beat {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(member = %member.id, "fleet heartbeat restored");
                }
                Ok(()) => {}
                Err(e) => {
                    if !failing {
                        tracing::warn!(member = %member.id, error = %e, "fleet heartbeat failed; retrying");
                    }
                    failing = true;
                }
            }
        }
        if let Ok(f) = fleet.get().await
            && let Err(e) = f.leave(member.role, &member.id).await
        {
            tracing::warn!(member = %member.id, error = %e, "could not leave the fleet cleanly");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(id: &str, role: &str, expires: u64) -> Vec<u8> {
        format!(r#"{{"id":"{id}","role":"{role}","endpoints":{{"oci":"http://127.0.0.1:1"}},"expires_at":{expires}}}"#).into_bytes()
    }

    #[test]
    fn forged_member_records_are_refused() {
        let ttl = MEMBER_TTL;
        let now = 1_000_000;
        let ok = validate(
            MemberRole::Gateway,
            "gw-1",
            (now + 5) as f64,
            Some(&record("gw-1", "gateway", now + 5)),
            now,
            ttl,
        );
        assert!(ok.is_ok(), "{ok:?}");
        for (id, score, rec) in [
            ("gw 1", now + 5, record("gw 1", "gateway", now + 5)),
            ("gw-1", now + 5, record("gw-2", "gateway", now + 5)),
            ("gw-1", now + 5, record("gw-1", "scheduler", now + 5)),
            ("gw-1", now + 3600, record("gw-1", "gateway", now + 3600)),
            ("gw-1", now + 5, b"{not json".to_vec()),
            ("gw-1", now + 5, vec![b' '; MAX_RECORD_LEN + 1]),
        ] {
            assert!(
                validate(MemberRole::Gateway, id, score as f64, Some(&rec), now, ttl).is_err(),
                "{id} {score} {}",
                String::from_utf8_lossy(&rec)
            );
        }
        assert!(
            validate(
                MemberRole::Gateway,
                "gw-1",
                (now + 5) as f64,
                None,
                now,
                ttl
            )
            .is_err()
        );
        assert!(
            validate(
                MemberRole::Gateway,
                "gw-1",
                f64::NAN,
                Some(&record("gw-1", "gateway", now + 5)),
                now,
                ttl
            )
            .is_err()
        );
    }

    proptest! {
        #[test]
        fn any_record_from_redis_is_judged_without_panic(
            id in ".{0,80}",
            score in proptest::num::f64::ANY,
            rec in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            let _ = validate(MemberRole::Scheduler, &id, score, Some(&rec), 1_000_000, MEMBER_TTL);
        }

        #[test]
        fn member_ids_accept_exactly_the_safe_alphabet(s in ".{0,70}") {
            let ok = s.parse::<MemberId>().is_ok();
            let want = !s.is_empty() && s.len() <= MAX_ID_LEN
                && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
            prop_assert_eq!(ok, want);
        }
    }
}
