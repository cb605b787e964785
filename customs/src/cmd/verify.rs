//! `customs verify IMAGE_REF --policy PATH`: the policy decision for one
//! image, with every rule's reason — what the gateway would decide, run by
//! hand or in CI. Evidence comes from the image's registry (or an OCI
//! layout written by `cosign save`), verified offline like the gateway does.

use anyhow::{Context, bail};
use customs_gateway::credentials::Credentials;
use customs_gateway::upstream::{UpstreamSettings, Upstreams};
use customs_policy::layout::Layout;
use customs_policy::{Evidence, EvidenceRegistry, PolicyDecision, PolicySet};
use customs_protocol::{Digest, ImageRef, Reference, RegistryHost};
use std::path::PathBuf;

/// Arguments.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The image: `registry/repository:tag` or `…@sha256:<hex>`.
    image: String,
    /// Policy directory (every `*.yaml` in it, validated as a whole).
    #[arg(long, env = "CUSTOMS_POLICY")]
    policy: PathBuf,
    /// `text` (default) or `json` (the full decision).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    output: String,
    /// Where the image's registry is: `HOST=URL`. Repeatable. Without it a
    /// loopback host is reached over `http://`, any other over `https://`.
    #[arg(long = "registry", value_name = "HOST=URL")]
    registries: Vec<String>,
    /// docker config.json with registry credentials.
    #[arg(long, env = "CUSTOMS_DOCKER_CONFIG")]
    docker_config: Option<PathBuf>,
    /// PEM file of extra CAs for registry TLS.
    #[arg(long)]
    extra_ca: Option<PathBuf>,
    /// Read the image and its evidence from an OCI layout (`cosign save`)
    /// instead of a registry; IMAGE_REF still names the image.
    #[arg(long, conflicts_with_all = ["registries", "docker_config"])]
    layout: Option<PathBuf>,
    /// Write the evidence found to FILE (JSON), for `customs policy test`.
    #[arg(long, value_name = "FILE")]
    record_evidence: Option<PathBuf>,
}

/// Loads and validates a policy directory; errors carry file:line.
pub fn load(dir: &std::path::Path) -> anyhow::Result<PolicySet> {
    let snap = customs_policy::Snapshot::from_dir(dir)
        .with_context(|| format!("reading policy source {}", dir.display()))?;
    customs_policy::compile(&snap)
        .map_err(|e| anyhow::anyhow!("policy source {} refused:\n{e}", dir.display()))
}

/// Prints the decision; Ok(true) when allowed.
pub async fn run(a: VerifyArgs) -> anyhow::Result<bool> {
    let set = load(&a.policy)?;
    let image: ImageRef = a.image.parse()?;
    let (decision, evidence) = match &a.layout {
        Some(dir) => {
            let layout = Layout::open(dir)?;
            let digest = match (&image.reference, &layout.image) {
                (Reference::Digest(d), _) => d.clone(),
                (Reference::Tag(_), Some(d)) => d.clone(),
                (Reference::Tag(t), None) => {
                    match layout.manifest(&image.name, t.as_str()).await? {
                        Some(bytes) => Digest::of(&bytes),
                        None => bail!("{}: no image tagged {t}", dir.display()),
                    }
                }
            };
            set.decide(&layout, &image.name, &digest).await
        }
        None => {
            let upstreams = upstreams(&a, &image.name.registry)?;
            let digest = resolve(&upstreams, &image).await?;
            set.decide(&upstreams, &image.name, &digest).await
        }
    };
    if let Some(path) = &a.record_evidence {
        let ev = evidence.unwrap_or_else(|| Evidence {
            digest: decision.digest.clone(),
            ..Evidence::default()
        });
        let json = serde_json::to_vec_pretty(&ev)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    if a.output == "json" {
        println!("{}", serde_json::to_string_pretty(&decision)?);
    } else {
        print_text(&decision);
    }
    Ok(decision.allowed)
}

fn upstreams(a: &VerifyArgs, registry: &RegistryHost) -> anyhow::Result<Upstreams> {
    let mut entries = Vec::new();
    for r in &a.registries {
        let (host, url) = r
            .split_once('=')
            .with_context(|| format!("--registry {r:?}: expected HOST=URL"))?;
        let host: RegistryHost = host.parse()?;
        entries.push((host, url.to_owned()));
    }
    if !entries.iter().any(|(h, _)| h == registry) {
        let host = registry.as_str();
        let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
        let loopback = name == "localhost"
            || name == "[::1]"
            || name
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback());
        let scheme = if loopback { "http" } else { "https" };
        let url = if host == "docker.io" {
            "https://registry-1.docker.io".to_owned()
        } else {
            format!("{scheme}://{host}")
        };
        entries.push((registry.clone(), url));
    }
    let creds = match &a.docker_config {
        Some(p) => Credentials::load(p)?,
        None => Credentials::default(),
    };
    let extra_ca_pem = match &a.extra_ca {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    Ok(Upstreams::new(
        &entries,
        &creds,
        &UpstreamSettings {
            extra_ca_pem,
            timeouts: Default::default(),
        },
    )?)
}

/// The manifest digest `image` names, checked against the bytes.
async fn resolve(up: &Upstreams, image: &ImageRef) -> anyhow::Result<Digest> {
    let m = customs_mirror::Source::manifest(up, &image.name, &image.reference)
        .await
        .map_err(|f| anyhow::anyhow!("{image}: {}", f.message))?;
    let digest = Digest::of(&m.bytes);
    if let Reference::Digest(want) = &image.reference
        && *want != digest
    {
        bail!("{image}: the registry returned a manifest with digest {digest}");
    }
    Ok(digest)
}

fn print_text(d: &PolicyDecision) {
    let verdict = if d.allowed { "ALLOWED" } else { "DENIED" };
    println!(
        "{verdict} {}@{} (policy revision {}, mode {})",
        d.image,
        d.digest,
        d.revision,
        d.mode.as_str()
    );
    if let Some(e) = &d.error {
        println!("  {e}");
    }
    for p in &d.policies {
        let mark = if p.passed { "pass" } else { "FAIL" };
        println!("  policy {} ({}): {mark}", p.policy, p.mode.as_str());
        for r in &p.rules {
            let mark = if r.passed { "pass" } else { "FAIL" };
            println!("    {mark} {}: {}", r.rule, r.reason);
            for e in &r.evidence {
                println!(
                    "      evidence: {}",
                    serde_json::to_string(e).unwrap_or_default()
                );
            }
        }
    }
    for p in &d.evidence_problems {
        println!("  evidence skipped: {p}");
    }
}
