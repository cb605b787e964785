//! `customs verify-bundle`: verify a Sigstore bundle for a file or digest,
//! following the Sigstore clients' conformance CLI conventions.

use anyhow::{Context, bail};
use customs_policy::bundle_check::{BundleArtifact, BundleSigner, verify_bundle};
use customs_policy::keys::PublicKey;
use std::path::PathBuf;

/// Arguments.
#[derive(clap::Args)]
pub struct VerifyBundleArgs {
    /// The bundle (JSON; a `.jsonl` file's first line).
    #[arg(long)]
    bundle: PathBuf,
    /// Expected certificate SAN (exact).
    #[arg(long, requires = "certificate_oidc_issuer", conflicts_with = "key")]
    certificate_identity: Option<String>,
    /// Expected OIDC issuer (exact).
    #[arg(long, requires = "certificate_identity")]
    certificate_oidc_issuer: Option<String>,
    /// A PEM public key instead of an identity.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Sigstore trusted_root.json; default: the embedded public-good root.
    #[arg(long)]
    trusted_root: Option<PathBuf>,
    /// `sha256:<64 hex>` (when not a path on disk) or a file.
    file_or_digest: String,
}

/// Exit 0 when the bundle verifies, an error otherwise.
pub fn run(a: VerifyBundleArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.bundle)
        .with_context(|| format!("reading {}", a.bundle.display()))?;
    let bundle = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let bundle = if text.trim_start().starts_with('{')
        && a.bundle.extension().is_none_or(|e| e != "jsonl")
    {
        text.as_str()
    } else {
        bundle
    };
    let hex = a.file_or_digest.strip_prefix("sha256:");
    let artifact = match hex {
        Some(h)
            if h.len() == 64
                && h.chars().all(|c| c.is_ascii_hexdigit())
                && !std::path::Path::new(&a.file_or_digest).exists() =>
        {
            BundleArtifact::Sha256(h.to_ascii_lowercase())
        }
        _ => BundleArtifact::Blob(
            std::fs::read(&a.file_or_digest)
                .with_context(|| format!("reading {}", a.file_or_digest))?,
        ),
    };
    let signer = match (&a.certificate_identity, &a.certificate_oidc_issuer, &a.key) {
        (Some(identity), Some(issuer), None) => BundleSigner::Identity {
            identity: identity.clone(),
            issuer: issuer.clone(),
        },
        (None, None, Some(k)) => {
            let pem =
                std::fs::read_to_string(k).with_context(|| format!("reading {}", k.display()))?;
            BundleSigner::Key(PublicKey::from_pem(&pem)?)
        }
        _ => bail!("give --certificate-identity with --certificate-oidc-issuer, or --key"),
    };
    let root = match &a.trusted_root {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    match verify_bundle(bundle, &artifact, &signer, root.as_deref()) {
        Ok(who) => {
            println!("OK: signed by {who}");
            Ok(())
        }
        Err(e) => bail!("bundle does not verify: {e}"),
    }
}
