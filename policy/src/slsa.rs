//! SLSA provenance rules (v0.2 and v1): builder id, source repository and
//! ref, build type. Source locations are normalised so a rule says
//! `github.com/acme/app` whatever the predicate wrote
//! (`git+https://github.com/acme/app@refs/heads/main`, a v1 workflow block…).

use crate::glob::ImageGlob;
use serde_json::Value;

/// SLSA provenance v0.2.
pub const SLSA_V02: &str = "https://slsa.dev/provenance/v0.2";
/// SLSA provenance v1.
pub const SLSA_V1: &str = "https://slsa.dev/provenance/v1";

/// Compiled rules; an empty list places no constraint.
#[derive(Debug, Default)]
pub struct SlsaRules {
    /// Accepted builder ids.
    pub builder_ids: Vec<String>,
    /// Accepted normalised source repositories.
    pub source_repositories: Vec<String>,
    /// Accepted refs (globs: `*` within a segment, `**` across).
    pub source_refs: Vec<ImageGlob>,
    /// Accepted build types.
    pub build_types: Vec<String>,
}

/// A source location: normalised repository and optional ref.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// `github.com/acme/app`.
    pub repository: String,
    /// `refs/heads/main`, when known.
    pub git_ref: Option<String>,
}

/// Normalises `git+https://github.com/acme/app.git@refs/tags/v1` to
/// (`github.com/acme/app`, `refs/tags/v1`).
pub fn normalize_source(uri: &str) -> Source {
    let s = uri.trim();
    let s = s.strip_prefix("git+").unwrap_or(s);
    let s = s.split_once("://").map_or(s, |(_, rest)| rest);
    let (repo, git_ref) = match s.split_once('@') {
        Some((r, rf)) => (r, Some(rf.to_owned())),
        None => (s, None),
    };
    let repo = repo.trim_end_matches('/');
    let repo = repo.strip_suffix(".git").unwrap_or(repo);
    Source {
        repository: repo.to_ascii_lowercase(),
        git_ref,
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn uris(list: Option<&Value>) -> Vec<Source> {
    list.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|m| m.get("uri").and_then(Value::as_str))
                .filter(|u| u.starts_with("git+") || u.contains("github.com"))
                .map(normalize_source)
                .collect()
        })
        .unwrap_or_default()
}

/// What a provenance predicate says, normalised across versions.
#[derive(Debug, Default)]
pub struct Provenance {
    /// `builder.id` / `runDetails.builder.id`.
    pub builder_id: Option<String>,
    /// `buildType` / `buildDefinition.buildType`.
    pub build_type: Option<String>,
    /// The primary sources (config source / workflow), else the materials.
    pub sources: Vec<Source>,
}

/// Extracts the fields rules look at.
pub fn provenance(predicate_type: &str, p: &Value) -> Provenance {
    if predicate_type == SLSA_V1 {
        let mut sources = Vec::new();
        if let Some(repo) = str_at(
            p,
            &[
                "buildDefinition",
                "externalParameters",
                "workflow",
                "repository",
            ],
        ) {
            let mut s = normalize_source(repo);
            if let Some(r) = str_at(
                p,
                &["buildDefinition", "externalParameters", "workflow", "ref"],
            ) {
                s.git_ref = Some(r.to_owned());
            }
            sources.push(s);
        }
        if sources.is_empty() {
            sources = uris(p.pointer("/buildDefinition/resolvedDependencies"));
        }
        Provenance {
            builder_id: str_at(p, &["runDetails", "builder", "id"]).map(str::to_owned),
            build_type: str_at(p, &["buildDefinition", "buildType"]).map(str::to_owned),
            sources,
        }
    } else {
        let mut sources: Vec<Source> = str_at(p, &["invocation", "configSource", "uri"])
            .map(normalize_source)
            .into_iter()
            .collect();
        if sources.is_empty() {
            sources = uris(p.get("materials"));
        }
        Provenance {
            builder_id: str_at(p, &["builder", "id"]).map(str::to_owned),
            build_type: str_at(p, &["buildType"]).map(str::to_owned),
            sources,
        }
    }
}

impl SlsaRules {
    /// Checks a provenance predicate; `Err` names the first failed rule.
    pub fn check(&self, predicate_type: &str, predicate: &Value) -> Result<(), String> {
        let p = provenance(predicate_type, predicate);
        if !self.builder_ids.is_empty() {
            match &p.builder_id {
                Some(b) if self.builder_ids.iter().any(|x| x == b) => {}
                Some(b) => {
                    return Err(format!(
                        "builder id {b:?} is not accepted (policy allows {})",
                        self.builder_ids.join(", ")
                    ));
                }
                None => return Err("provenance names no builder id".into()),
            }
        }
        if !self.build_types.is_empty() {
            match &p.build_type {
                Some(b) if self.build_types.iter().any(|x| x == b) => {}
                Some(b) => return Err(format!("build type {b:?} is not accepted")),
                None => return Err("provenance names no build type".into()),
            }
        }
        if self.source_repositories.is_empty() && self.source_refs.is_empty() {
            return Ok(());
        }
        if p.sources.is_empty() {
            return Err("provenance names no source repository".into());
        }
        let ok = p.sources.iter().any(|s| {
            (self.source_repositories.is_empty()
                || self.source_repositories.contains(&s.repository))
                && (self.source_refs.is_empty()
                    || s.git_ref
                        .as_deref()
                        .is_some_and(|r| self.source_refs.iter().any(|g| g.matches(r))))
        });
        if ok {
            Ok(())
        } else {
            let found: Vec<String> = p
                .sources
                .iter()
                .map(|s| match &s.git_ref {
                    Some(r) => format!("{}@{r}", s.repository),
                    None => s.repository.clone(),
                })
                .collect();
            let mut wanted = Vec::new();
            if !self.source_repositories.is_empty() {
                wanted.push(format!(
                    "repositories {}",
                    self.source_repositories.join(", ")
                ));
            }
            if !self.source_refs.is_empty() {
                let refs: Vec<String> = self.source_refs.iter().map(|g| g.to_string()).collect();
                wanted.push(format!("refs {}", refs.join(", ")));
            }
            Err(format!(
                "source {} is not accepted (policy allows {})",
                found.join(", "),
                wanted.join("; ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalises_sources() {
        let s = normalize_source("git+https://github.com/Acme/app.git@refs/tags/v1");
        assert_eq!(s.repository, "github.com/acme/app");
        assert_eq!(s.git_ref.as_deref(), Some("refs/tags/v1"));
        assert_eq!(
            normalize_source("https://github.com/acme/app").git_ref,
            None
        );
    }

    #[test]
    fn v02_and_v1_rules() {
        let v02 = json!({"builder":{"id":"B"},"buildType":"T",
            "invocation":{"configSource":{"uri":"git+https://github.com/acme/app@refs/heads/main"}}});
        let rules = SlsaRules {
            builder_ids: vec!["B".into()],
            source_repositories: vec!["github.com/acme/app".into()],
            source_refs: vec![ImageGlob::new("refs/heads/main").unwrap()],
            build_types: vec!["T".into()],
        };
        assert!(rules.check(SLSA_V02, &v02).is_ok());
        let v1 = json!({"buildDefinition":{"buildType":"T","externalParameters":{"workflow":
            {"repository":"https://github.com/acme/app","ref":"refs/heads/main","path":".github/x.yml"}}},
            "runDetails":{"builder":{"id":"B"}}});
        assert!(rules.check(SLSA_V1, &v1).is_ok());
        let other = json!({"builder":{"id":"B"},"buildType":"T",
            "invocation":{"configSource":{"uri":"git+https://github.com/evil/app@refs/heads/main"}}});
        assert!(rules.check(SLSA_V02, &other).unwrap_err().contains("evil"));
        let wrong_ref = json!({"builder":{"id":"B"},"buildType":"T",
            "invocation":{"configSource":{"uri":"git+https://github.com/acme/app@refs/heads/dev"}}});
        assert!(rules.check(SLSA_V02, &wrong_ref).is_err());
        assert!(rules.check(SLSA_V02, &json!({})).is_err());
    }
}
