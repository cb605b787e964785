//! Compiles a [`Snapshot`] into a [`PolicySet`]: parses every YAML
//! document, resolves authority names, key files and trust roots, compiles
//! globs, regexes and CEL. Any error refuses the whole revision.

use crate::authority::{Authority, AuthorityKind, GithubClaims, Identity, Matcher, TrustRoot};
use crate::conditions::Condition;
use crate::error::{LoadError, LoadErrors};
use crate::glob::ImageGlob;
use crate::keys::PublicKey;
use crate::slsa::SlsaRules;
use crate::snapshot::Snapshot;
use crate::spec::{self, Document, Mode};
use customs_protocol::{ImageName, RegistryHost, Repository};
use serde_saphyr::Spanned;
use sigstore_verify::Verifier;
use sigstore_verify::trust_root::{SIGSTORE_PRODUCTION_TRUSTED_ROOT, TrustedRoot};
use std::collections::HashMap;
use std::sync::Arc;

/// A compiled policy.
pub struct Policy {
    /// `metadata.name`.
    pub name: String,
    /// The file it came from.
    pub file: String,
    /// Scope.
    pub images: Vec<ImageGlob>,
    /// Carve-outs from the scope.
    pub exclude: Vec<ImageGlob>,
    /// What a failure does.
    pub mode: Mode,
    /// Authorities, by index.
    pub authorities: Vec<Arc<Authority>>,
    /// Required signatures: authority indexes and threshold.
    pub signatures: Option<SignatureRule>,
    /// Required attestations.
    pub attestations: Vec<AttestationRule>,
}

/// `spec.signatures`, compiled.
pub struct SignatureRule {
    /// Indexes into [`Policy::authorities`].
    pub authorities: Vec<usize>,
    /// Distinct authorities needed.
    pub threshold: usize,
}

/// One `spec.attestations` entry, compiled.
pub struct AttestationRule {
    /// Rule name.
    pub name: String,
    /// Required predicate type.
    pub predicate_type: String,
    /// Indexes into [`Policy::authorities`].
    pub authorities: Vec<usize>,
    /// SLSA rules.
    pub slsa: Option<SlsaRules>,
    /// CEL conditions.
    pub conditions: Vec<Condition>,
}

/// A policy test suite found in the source.
pub struct TestSuite {
    /// The file it came from.
    pub file: String,
    /// The document.
    pub doc: spec::ImagePolicyTestDoc,
}

/// Every policy of one revision.
pub struct PolicySet {
    /// Git commit or content hash.
    pub revision: String,
    /// When the revision was made (a Git commit's time, Unix seconds; 0
    /// when unknown): nodes order revisions of several gateways by it.
    pub revision_time: u64,
    /// The policies.
    pub policies: Vec<Policy>,
    /// Test suites (`customs policy test`).
    pub tests: Vec<TestSuite>,
}

impl Policy {
    /// Whether `registry/repository` is in scope.
    pub fn applies_to(&self, image: &str) -> bool {
        self.images.iter().any(|g| g.matches(image))
            && !self.exclude.iter().any(|g| g.matches(image))
    }
}

struct Ctx<'a> {
    snap: &'a Snapshot,
    file: String,
    errors: Vec<LoadError>,
    roots: HashMap<String, Arc<TrustRoot>>,
    /// Lines before the current document in its file.
    offset: u64,
}

impl Ctx<'_> {
    fn err(&mut self, line: Option<u64>, message: impl Into<String>) {
        self.errors.push(LoadError {
            file: self.file.clone(),
            line,
            message: message.into(),
        });
    }

    fn err_at<T>(&mut self, at: &Spanned<T>, message: impl Into<String>) {
        self.err(Some(at.referenced.line() + self.offset), message);
    }

    fn regex(&mut self, at: &Spanned<String>) -> Option<regex::Regex> {
        match regex::Regex::new(&at.value) {
            Ok(r) => Some(r),
            Err(e) => {
                self.err_at(at, format!("bad regular expression: {e}"));
                None
            }
        }
    }

    fn glob(&mut self, at: &Spanned<String>) -> Option<ImageGlob> {
        match ImageGlob::new(&at.value) {
            Ok(g) => Some(g),
            Err(e) => {
                self.err_at(at, e.to_string());
                None
            }
        }
    }

    fn root(&mut self, at: Option<&Spanned<String>>) -> Option<Arc<TrustRoot>> {
        let (key, json, line) = match at {
            None => (
                "embedded".to_owned(),
                SIGSTORE_PRODUCTION_TRUSTED_ROOT.to_owned(),
                None,
            ),
            Some(p) => match self.snap.resolve(&self.file, &p.value) {
                Ok((path, bytes)) => (
                    path,
                    String::from_utf8_lossy(bytes).into_owned(),
                    Some(p.referenced.line() + self.offset),
                ),
                Err(e) => {
                    self.err_at(p, format!("trusted root: {e}"));
                    return None;
                }
            },
        };
        if let Some(r) = self.roots.get(&key) {
            return Some(r.clone());
        }
        let verifier = TrustedRoot::from_json(&json)
            .map_err(|e| e.to_string())
            .and_then(|root| Verifier::new(&root).map_err(|e| e.to_string()));
        match verifier {
            Ok(verifier) => {
                let r = Arc::new(TrustRoot {
                    source: key.clone(),
                    verifier,
                });
                self.roots.insert(key, r.clone());
                Some(r)
            }
            Err(e) => {
                self.err(line, format!("trusted root {key}: {e}"));
                None
            }
        }
    }
}

/// Parses `registry/repository` as written in `signatureRepository`.
pub fn parse_image_name(s: &str) -> Result<ImageName, String> {
    let (registry, repository) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not registry/repository"))?;
    let registry: RegistryHost = registry.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let repository: Repository = repository.parse().map_err(|e| format!("{s:?}: {e}"))?;
    Ok(ImageName {
        registry,
        repository,
    })
}

fn api_version(ctx: &mut Ctx<'_>, v: &Spanned<String>) {
    if v.value != spec::API_VERSION {
        ctx.err_at(v, format!("apiVersion must be {}", spec::API_VERSION));
    }
}

fn authority(ctx: &mut Ctx<'_>, a: &spec::AuthoritySpec) -> Option<Authority> {
    let name = a.name.value.clone();
    let signature_repository = match &a.signature_repository {
        Some(r) => match parse_image_name(&r.value) {
            Ok(n) => Some(n),
            Err(e) => {
                ctx.err_at(r, format!("signatureRepository: {e}"));
                return None;
            }
        },
        None => None,
    };
    let kind = match (&a.key, &a.keyless) {
        (Some(k), None) => {
            let key = match ctx.snap.resolve(&ctx.file, &k.path.value) {
                Ok((path, bytes)) => match PublicKey::from_pem(&String::from_utf8_lossy(bytes)) {
                    Ok(key) => key,
                    Err(e) => {
                        ctx.err_at(&k.path, format!("key {path}: {e}"));
                        return None;
                    }
                },
                Err(e) => {
                    ctx.err_at(&k.path, format!("key: {e}"));
                    return None;
                }
            };
            let root = ctx.root(k.trusted_root.as_ref())?;
            AuthorityKind::Key {
                key,
                tlog: k.tlog,
                root,
            }
        }
        (None, Some(kl)) => {
            let root = ctx.root(kl.trusted_root.as_ref())?;
            if kl.identities.is_empty() {
                ctx.err_at(
                    &a.name,
                    format!("authority {name}: keyless needs at least one identity"),
                );
                return None;
            }
            let mut identities = Vec::new();
            for id in &kl.identities {
                let issuer = match (&id.issuer, &id.issuer_reg_exp) {
                    (Some(i), None) => Matcher::Exact(i.value.clone()),
                    (None, Some(r)) => Matcher::Regex(ctx.regex(r)?),
                    _ => {
                        ctx.err_at(&a.name, format!("authority {name}: each identity needs exactly one of issuer / issuerRegExp"));
                        return None;
                    }
                };
                let subject = match (&id.subject, &id.subject_reg_exp) {
                    (Some(s), None) => Matcher::Exact(s.value.clone()),
                    (None, Some(r)) => Matcher::Regex(ctx.regex(r)?),
                    _ => {
                        ctx.err_at(&a.name, format!("authority {name}: each identity needs exactly one of subject / subjectRegExp"));
                        return None;
                    }
                };
                let github = id.github.as_ref().map(|g| GithubClaims {
                    repository: g.repository.clone(),
                    git_ref: g.git_ref.clone(),
                    sha: g.sha.clone(),
                    trigger: g.trigger.clone(),
                });
                identities.push(Identity {
                    issuer,
                    subject,
                    github,
                });
            }
            AuthorityKind::Keyless { root, identities }
        }
        _ => {
            ctx.err_at(
                &a.name,
                format!("authority {name}: give exactly one of key / keyless"),
            );
            return None;
        }
    };
    Some(Authority {
        name,
        kind,
        signature_repository,
    })
}

fn names(
    ctx: &mut Ctx<'_>,
    list: &[Spanned<String>],
    index: &HashMap<String, usize>,
) -> Vec<usize> {
    let mut out = Vec::new();
    for n in list {
        match index.get(&n.value) {
            Some(i) if !out.contains(i) => out.push(*i),
            Some(_) => ctx.err_at(n, format!("authority {} is listed twice", n.value)),
            None => ctx.err_at(n, format!("unknown authority {:?}", n.value)),
        }
    }
    out
}

fn policy(ctx: &mut Ctx<'_>, doc: spec::ImagePolicyDoc) -> Option<Policy> {
    api_version(ctx, &doc.api_version);
    let spec = doc.spec;
    if spec.images.is_empty() {
        ctx.err_at(
            &doc.metadata.name,
            "spec.images must list at least one glob",
        );
    }
    let images: Vec<_> = spec.images.iter().filter_map(|g| ctx.glob(g)).collect();
    let exclude: Vec<_> = spec.exclude.iter().filter_map(|g| ctx.glob(g)).collect();
    let mut authorities = Vec::new();
    let mut index = HashMap::new();
    for a in &spec.authorities {
        if index.contains_key(&a.name.value) {
            ctx.err_at(
                &a.name,
                format!("authority {} is defined twice", a.name.value),
            );
            continue;
        }
        if let Some(c) = authority(ctx, a) {
            index.insert(a.name.value.clone(), authorities.len());
            authorities.push(Arc::new(c));
        }
    }
    let signatures = spec.signatures.as_ref().map(|s| {
        let list = names(ctx, &s.authorities, &index);
        let threshold = s.threshold.as_ref().map_or(1, |t| t.value as usize);
        if list.is_empty() {
            ctx.err_at(
                &doc.metadata.name,
                "signatures.authorities must name at least one authority",
            );
        }
        if threshold == 0 || threshold > s.authorities.len().max(1) {
            let at = s
                .threshold
                .as_ref()
                .map(|t| t.referenced.line() + ctx.offset);
            ctx.err(
                at,
                format!("threshold must be between 1 and {}", s.authorities.len()),
            );
        }
        SignatureRule {
            authorities: list,
            threshold,
        }
    });
    let mut attestations = Vec::new();
    for a in &spec.attestations {
        let list = names(ctx, &a.authorities, &index);
        if a.authorities.is_empty() {
            ctx.err_at(
                &a.name,
                format!("attestation {}: name at least one authority", a.name.value),
            );
        }
        let slsa = a.slsa.as_ref().map(|s| SlsaRules {
            builder_ids: s.builder_ids.clone(),
            source_repositories: s
                .source_repositories
                .iter()
                .map(|r| crate::slsa::normalize_source(r).repository)
                .collect(),
            source_refs: s
                .source_refs
                .iter()
                .filter_map(|r| match ImageGlob::path(r) {
                    Ok(g) => Some(g),
                    Err(e) => {
                        ctx.err_at(&a.name, format!("sourceRefs: {e}"));
                        None
                    }
                })
                .collect(),
            build_types: s.build_types.clone(),
        });
        let mut conditions = Vec::new();
        for c in &a.conditions {
            match Condition::compile(&c.cel.value, c.message.clone()) {
                Ok(c) => conditions.push(c),
                Err(e) => ctx.err_at(&c.cel, e),
            }
        }
        attestations.push(AttestationRule {
            name: a.name.value.clone(),
            predicate_type: a.predicate_type.value.clone(),
            authorities: list,
            slsa,
            conditions,
        });
    }
    Some(Policy {
        name: doc.metadata.name.value,
        file: ctx.file.clone(),
        images,
        exclude,
        mode: spec.mode,
        authorities,
        signatures,
        attestations,
    })
}

/// Compiles every `*.yaml` / `*.yml` document of the snapshot.
pub fn compile(snap: &Snapshot) -> Result<PolicySet, LoadErrors> {
    let mut ctx = Ctx {
        snap,
        file: String::new(),
        errors: Vec::new(),
        roots: HashMap::new(),
        offset: 0,
    };
    let mut policies: Vec<Policy> = Vec::new();
    let mut tests = Vec::new();
    for (path, bytes) in snap.files() {
        if !(path.ends_with(".yaml") || path.ends_with(".yml")) {
            continue;
        }
        ctx.file = path.to_owned();
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => {
                ctx.err(None, "not UTF-8");
                continue;
            }
        };
        let mut docs = Vec::new();
        for (offset, doc_text) in split_documents(text) {
            ctx.offset = offset;
            if doc_text.trim().is_empty() {
                continue;
            }
            let kind = match serde_saphyr::from_str::<spec::KindProbe>(doc_text) {
                Ok(p) => p.kind,
                Err(e) => {
                    ctx.err(None, e.to_string());
                    continue;
                }
            };
            let parsed = match kind.as_str() {
                "ImagePolicy" => serde_saphyr::from_str(doc_text).map(Document::ImagePolicy),
                "ImagePolicyTest" => {
                    serde_saphyr::from_str(doc_text).map(Document::ImagePolicyTest)
                }
                other => {
                    ctx.err(
                        Some(offset + 1),
                        format!("unknown kind {other:?} (ImagePolicy or ImagePolicyTest)"),
                    );
                    continue;
                }
            };
            match parsed {
                Ok(d) => docs.push((offset, d)),
                Err(e) => ctx.err(None, e.to_string()),
            }
        }
        for (offset, doc) in docs {
            ctx.offset = offset;
            match doc {
                Document::ImagePolicy(p) => {
                    let line = p.metadata.name.referenced.line() + offset;
                    if let Some(p) = policy(&mut ctx, p) {
                        if policies.iter().any(|q| q.name == p.name) {
                            ctx.err(Some(line), format!("policy {} is defined twice", p.name));
                        } else {
                            policies.push(p);
                        }
                    }
                }
                Document::ImagePolicyTest(t) => {
                    api_version(&mut ctx, &t.api_version);
                    tests.push(TestSuite {
                        file: path.to_owned(),
                        doc: t,
                    });
                }
            }
        }
    }
    if ctx.errors.is_empty() {
        Ok(PolicySet {
            revision: snap.revision().to_owned(),
            revision_time: snap.time(),
            policies,
            tests,
        })
    } else {
        Err(LoadErrors(ctx.errors))
    }
}

/// Splits a YAML stream at `---` lines; each part with the number of lines
/// before it, so errors keep their line in the file.
fn split_documents(text: &str) -> Vec<(u64, &str)> {
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut start_line = 0u64;
    let mut pos = 0usize;
    for (line, l) in (0u64..).zip(text.split_inclusive('\n')) {
        if l.trim_end() == "---" {
            out.push((start_line, &text[start..pos]));
            start = pos + l.len();
            start_line = line + 1;
        }
        pos += l.len();
    }
    out.push((start_line, &text[start..]));
    out
}
