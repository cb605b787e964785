//! A process's view of the live members of one role, refreshed from Redis
//! in the background so that routing (which gateway owns a blob, which
//! scheduler a task) never waits on Redis.

use crate::member::MEMBER_TTL;
use crate::{LazyFleet, Member, MemberRole, unix_now};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the view is read again: a member that joins or dies is seen
/// within this (plus its heartbeat TTL for a death).
pub const REFRESH: Duration = Duration::from_secs(2);

/// The members of one role as last read from Redis. While Redis is down
/// the last set is kept, but each member only until its own heartbeat
/// expiry: after one TTL a partitioned process routes on itself alone.
pub struct MemberView {
    role: MemberRole,
    members: RwLock<Vec<Member>>,
}

impl MemberView {
    /// An empty view of `role` (nothing known yet).
    pub fn new(role: MemberRole) -> Arc<Self> {
        Arc::new(MemberView {
            role,
            members: RwLock::default(),
        })
    }

    /// A view that holds `members` until replaced (tests, fixed fleets).
    pub fn fixed(role: MemberRole, members: Vec<Member>) -> Arc<Self> {
        let v = Self::new(role);
        v.replace(members);
        v
    }

    /// The role this view follows.
    pub fn role(&self) -> MemberRole {
        self.role
    }

    /// Replaces the set (as read from Redis).
    pub fn replace(&self, members: Vec<Member>) {
        *self.members.write().unwrap_or_else(|e| e.into_inner()) = members;
    }

    /// The members whose heartbeat has not run out.
    pub fn live(&self) -> Vec<Member> {
        let now = unix_now();
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|m| m.expires_at >= now)
            .cloned()
            .collect()
    }

    /// Refreshes the view from `fleet` every [`REFRESH`] until `shutdown`.
    /// A failed read keeps the last set (each member expiring on its own).
    pub fn spawn_refresh(
        self: &Arc<Self>,
        fleet: Arc<LazyFleet>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let view = self.clone();
        customs_runtime::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                let read = match fleet.get().await {
                    Ok(f) => f.members(view.role, MEMBER_TTL).await,
                    Err(e) => Err(e),
                };
                match read {
                    Ok(members) => {
                        if failing {
                            tracing::info!(
                                role = view.role.as_str(),
                                members = members.len(),
                                "fleet view restored"
                            );
                        }
                        failing = false;
                        view.replace(members);
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(role = view.role.as_str(), error = %e, "fleet view not refreshed; keeping the last one until its members expire");
                        }
                        failing = true;
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_members_drop_out_of_a_view_that_is_not_refreshed() {
        let now = unix_now();
        let m = |id: &str, expires_at| Member {
            id: id.parse().unwrap(),
            role: MemberRole::Gateway,
            endpoints: Default::default(),
            zone: String::new(),
            expires_at,
        };
        let v = MemberView::fixed(MemberRole::Gateway, vec![m("a", now + 5), m("b", now - 1)]);
        let live: Vec<String> = v.live().into_iter().map(|m| m.id.to_string()).collect();
        assert_eq!(live, ["a"]);
    }
}
