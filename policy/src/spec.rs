//! The policy file format: YAML documents an operator reviews in pull
//! requests. Typed structs with `deny_unknown_fields`, so a typo is an error
//! and never a silently ignored rule. Values whose problems are found after
//! parsing (unknown authority names, bad regexes, missing key files) are
//! `Spanned`, so those errors still carry file:line.

use serde::Deserialize;
use serde_saphyr::Spanned;

/// The only API version this build reads.
pub const API_VERSION: &str = "customs.dev/v1alpha1";

/// Just the `kind` of a document, read first so the document itself is
/// parsed into its own type (an internally tagged enum would buffer the
/// document and lose the line numbers of `Spanned` values).
#[derive(Debug, Deserialize)]
pub struct KindProbe {
    /// `ImagePolicy` or `ImagePolicyTest`.
    pub kind: String,
}

/// A YAML document in a policy source: a policy or a policy's tests.
#[derive(Debug)]
pub enum Document {
    /// Rules for a set of images.
    ImagePolicy(ImagePolicyDoc),
    /// Test cases `customs policy test` runs.
    ImagePolicyTest(ImagePolicyTestDoc),
}

/// `kind: ImagePolicy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImagePolicyDoc {
    /// The document kind (already dispatched on).
    pub kind: String,
    /// Must be [`API_VERSION`].
    pub api_version: Spanned<String>,
    /// Names the policy in decisions.
    pub metadata: Metadata,
    /// The rules.
    pub spec: PolicySpec,
}

/// Object metadata.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Unique across the policy source.
    pub name: Spanned<String>,
}

/// What happens when a policy fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Allow and record.
    Audit,
    /// Allow, flag the decision and record.
    Warn,
    /// Deny.
    Enforce,
}

impl Mode {
    /// The lowercase name used in files, decisions and audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Audit => "audit",
            Mode::Warn => "warn",
            Mode::Enforce => "enforce",
        }
    }
}

fn enforce() -> Mode {
    Mode::Enforce
}

/// `spec` of an `ImagePolicy`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    /// `registry/repository` globs the policy applies to.
    pub images: Vec<Spanned<String>>,
    /// Globs carved out of `images`.
    #[serde(default)]
    pub exclude: Vec<Spanned<String>>,
    /// Defaults to `enforce`.
    #[serde(default = "enforce")]
    pub mode: Mode,
    /// Who may sign.
    #[serde(default)]
    pub authorities: Vec<AuthoritySpec>,
    /// Required image signatures; absent means none are required.
    pub signatures: Option<SignaturesSpec>,
    /// Required attestations.
    #[serde(default)]
    pub attestations: Vec<AttestationSpec>,
}

/// A named signer: a public key or a set of keyless identities.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthoritySpec {
    /// Referenced by `signatures` and `attestations`.
    pub name: Spanned<String>,
    /// A public key (PEM file).
    pub key: Option<KeySpec>,
    /// Keyless (Fulcio certificate) identities.
    pub keyless: Option<KeylessSpec>,
    /// Where this authority's signatures live, as `registry/repository`
    /// (cosign's `COSIGN_REPOSITORY`); default: the image's own repository.
    pub signature_repository: Option<Spanned<String>>,
}

/// Whether a Rekor entry is demanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlogPolicy {
    /// Checked when present, not required (the default for keys).
    #[default]
    Optional,
    /// A verified Rekor entry must accompany the signature.
    Required,
}

/// A public key authority.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeySpec {
    /// PEM `PUBLIC KEY` file (ECDSA P-256/P-384, Ed25519, RSA), relative to the policy file.
    pub path: Spanned<String>,
    /// Rekor requirement.
    #[serde(default)]
    pub tlog: TlogPolicy,
    /// Trusted root for Rekor checks; default: the embedded public-good root.
    pub trusted_root: Option<Spanned<String>>,
}

/// Keyless identities verified offline against a trusted root.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeylessSpec {
    /// Sigstore `trusted_root.json`, relative to the policy file; default:
    /// the public-good root embedded at build time.
    pub trusted_root: Option<Spanned<String>>,
    /// Any one of these identities is accepted.
    pub identities: Vec<IdentitySpec>,
}

/// One accepted certificate identity.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IdentitySpec {
    /// OIDC issuer, exact.
    pub issuer: Option<Spanned<String>>,
    /// OIDC issuer, RE2 regular expression (unanchored unless `^…$`).
    pub issuer_reg_exp: Option<Spanned<String>>,
    /// Certificate SAN, exact.
    pub subject: Option<Spanned<String>>,
    /// Certificate SAN, RE2 regular expression.
    pub subject_reg_exp: Option<Spanned<String>>,
    /// Fulcio GitHub workflow claims that must match exactly.
    pub github: Option<GithubClaimsSpec>,
}

/// GitHub Actions claims carried in Fulcio certificate extensions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GithubClaimsSpec {
    /// `owner/repo` of the workflow's repository.
    pub repository: Option<String>,
    /// The ref the workflow ran on (`refs/heads/main`).
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// The commit SHA.
    pub sha: Option<String>,
    /// The trigger (`push`, `workflow_dispatch`…).
    pub trigger: Option<String>,
}

/// Required image signatures.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SignaturesSpec {
    /// Authorities whose signatures count.
    pub authorities: Vec<Spanned<String>>,
    /// Distinct authorities needed (default 1).
    pub threshold: Option<Spanned<u32>>,
}

/// A required attestation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AttestationSpec {
    /// Names the rule in decisions.
    pub name: Spanned<String>,
    /// The in-toto predicate type required.
    pub predicate_type: Spanned<String>,
    /// Authorities whose attestations count.
    pub authorities: Vec<Spanned<String>>,
    /// SLSA provenance rules.
    pub slsa: Option<SlsaSpec>,
    /// CEL conditions over the predicate.
    #[serde(default)]
    pub conditions: Vec<ConditionSpec>,
}

/// SLSA provenance rules; each non-empty list must contain the value found.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SlsaSpec {
    /// Accepted `builder.id`s (exact).
    #[serde(default)]
    pub builder_ids: Vec<String>,
    /// Accepted source repositories, normalised (`github.com/acme/app`).
    #[serde(default)]
    pub source_repositories: Vec<String>,
    /// Accepted source refs (`refs/heads/main`, `refs/tags/*` globs).
    #[serde(default)]
    pub source_refs: Vec<String>,
    /// Accepted build types (exact).
    #[serde(default)]
    pub build_types: Vec<String>,
}

/// A CEL condition.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    /// The expression; must evaluate to `true`.
    pub cel: Spanned<String>,
    /// What the condition means, shown when it fails.
    pub message: Option<String>,
}

/// `kind: ImagePolicyTest`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImagePolicyTestDoc {
    /// The document kind (already dispatched on).
    pub kind: String,
    /// Must be [`API_VERSION`].
    pub api_version: Spanned<String>,
    /// Names the test suite.
    pub metadata: Metadata,
    /// The cases.
    pub spec: PolicyTestSpec,
}

/// The cases of a policy test.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyTestSpec {
    /// Each runs one decision.
    pub cases: Vec<PolicyTestCase>,
}

/// Expected outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// The image is admitted.
    Allow,
    /// The image is denied.
    Deny,
}

/// One decision with recorded evidence and the expected outcome.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTestCase {
    /// Shown in the report.
    pub name: String,
    /// `registry/repository@sha256:…`.
    pub image: Spanned<String>,
    /// Recorded evidence (`customs verify --record-evidence`), relative to the file.
    pub evidence: Spanned<String>,
    /// Expected verdict.
    pub expect: Expect,
    /// A substring the decision's reasons must contain, if given.
    pub reason_contains: Option<String>,
}
