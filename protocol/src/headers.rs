//! HTTP headers Customs components add to each other's responses.

/// The policy revision a gateway decides under, on every response of its
/// OCI endpoints. A node learns revisions from it: an admission made under
/// an older revision is no longer current there.
pub const POLICY_REVISION: &str = "customs-policy-revision";

/// When the revision in [`POLICY_REVISION`] was made (its Git commit's
/// time, Unix seconds), when known. Nodes that talk to several gateways
/// never take a revision older than the newest they have seen: a gateway
/// that lags behind the policy repository cannot re-admit what a newer
/// revision revoked.
pub const POLICY_REVISION_TIME: &str = "customs-policy-revision-time";

/// How often (milliseconds) the gateway polls its policy source, on every
/// response of its OCI endpoints. A node polls the gateway's revision at
/// half that period, so a revision reaches it within two poll intervals of
/// its commit.
pub const POLICY_POLL_MS: &str = "customs-policy-poll-ms";
