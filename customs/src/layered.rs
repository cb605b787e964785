//! One way every component reads its configuration, lowest precedence
//! first: built-in defaults < the YAML file (`--config`) < environment
//! variables < flags.
//!
//! Environment variables name a key by its path under a per-component
//! prefix, sections separated by `__`: `CUSTOMS_GATEWAY__POLICY__POLL=30s`
//! sets the gateway's `policy.poll`, `CUSTOMS_PEER__SWARM__UPLOAD_LIMIT`
//! the peer's `swarm.upload_limit`. The older flat variables
//! (`CUSTOMS_DATA_DIR`, `CUSTOMS_ZONE`, …) stand in for their flags and so
//! rank with them. Layering is figment's; the YAML is read with
//! serde-saphyr. Errors name the key and where its value came from.

use anyhow::Context as _;
use figment::providers::{Env, Serialized};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// The values flags set, by key path (`policy.poll`), layered over
/// everything else. Only flags that were given are set.
#[derive(Default)]
pub struct Overlay(serde_json::Map<String, serde_json::Value>);

impl Overlay {
    /// Sets `path` (dot-separated) to `value` when it is `Some`.
    pub fn set<T: Serialize>(&mut self, path: &str, value: Option<T>) -> anyhow::Result<()> {
        let Some(v) = value else {
            return Ok(());
        };
        let v = serde_json::to_value(v).with_context(|| format!("flag for {path}"))?;
        let mut keys: Vec<&str> = path.split('.').collect();
        let last = keys.pop().context("empty key path")?;
        let mut at = &mut self.0;
        for k in keys {
            let entry = at
                .entry(k.to_owned())
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            at = entry
                .as_object_mut()
                .with_context(|| format!("{path}: {k} is not a section"))?;
        }
        at.insert(last.to_owned(), v);
        Ok(())
    }
}

/// The YAML file as a figment provider, named in errors by its path.
struct YamlFile(PathBuf);

impl Provider for YamlFile {
    fn metadata(&self) -> Metadata {
        Metadata::named(format!("config file {}", self.0.display()))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let text = std::fs::read_to_string(&self.0)
            .map_err(|e| figment::Error::from(format!("reading {}: {e}", self.0.display())))?;
        let value: Value = if text.trim().is_empty() {
            Value::from(Dict::new())
        } else {
            serde_saphyr::from_str(&text)
                .map_err(|e| figment::Error::from(format!("{}: {e}", self.0.display())))?
        };
        let dict = value.into_dict().ok_or_else(|| {
            figment::Error::from(format!(
                "{}: the top level must be a mapping of keys",
                self.0.display()
            ))
        })?;
        Ok(Profile::Default.collect(dict))
    }
}

/// Keys that hold secrets: never read from the `CUSTOMS_<COMPONENT>__*`
/// environment (whose values figment types, so a numeric token would fail
/// and be echoed), and never echoed in an error. They come from the file,
/// the flags' own variables (`CUSTOMS_API_TOKEN`, …) or token files.
const SECRET_KEYS: &[&str] = &["api.token", "audit.hec_token", "fleet.redis"];

/// Prints `cfg` as the effective configuration (JSON, which is YAML too)
/// for `--print-config`: secrets are redacted by their type, and any URL's
/// user name and password (a Git or HEC URL with a token in it) too.
pub fn print<T: Serialize>(cfg: &T) -> anyhow::Result<()> {
    let mut v = serde_json::to_value(cfg)?;
    redact_urls(&mut v);
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn redact_urls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => {
            if let Ok(mut u) = url::Url::parse(s)
                && (!u.username().is_empty() || u.password().is_some())
            {
                let _ = u.set_username("redacted");
                let _ = u.set_password(None);
                *s = u.to_string();
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact_urls),
        serde_json::Value::Object(o) => o.values_mut().for_each(redact_urls),
        _ => {}
    }
}

/// `T` from defaults, `file`, the environment under `env_prefix` (e.g.
/// `CUSTOMS_GATEWAY__`) and `flags`, in that order of precedence.
pub fn load<T: Serialize + DeserializeOwned + Default>(
    file: Option<&Path>,
    env_prefix: &str,
    flags: Overlay,
) -> anyhow::Result<T> {
    let mut fig = Figment::from(Serialized::defaults(T::default()));
    if let Some(p) = file {
        fig = fig.merge(YamlFile(p.to_path_buf()));
    }
    let env = Env::prefixed(env_prefix)
        .filter(|k| {
            let key = k.as_str().to_ascii_lowercase().replace("__", ".");
            !SECRET_KEYS.contains(&key.as_str())
        })
        .split("__");
    fig = fig
        .merge(env)
        .merge(Serialized::defaults(serde_json::Value::Object(flags.0)));
    fig.extract().map_err(|e| {
        // figment names keys under their profile (`default.`); ours has
        // one. An error about a secret would quote its value: it does not.
        let all: Vec<String> = e
            .into_iter()
            .map(|e| {
                let key = e.path.join(".");
                if SECRET_KEYS.contains(&key.as_str()) {
                    format!("invalid value for key \"{key}\" (a secret: the value is not shown)")
                } else {
                    e.to_string().replace("key \"default.", "key \"")
                }
            })
            .collect();
        anyhow::anyhow!("configuration: {}", all.join("; "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use customs_gateway::GatewayConfig;
    use std::time::Duration;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let f =
            file("upstream:\n  url: http://127.0.0.1:5000\n  tag_ttl: 45s\npolicy:\n  poll: 20s\n");
        let mut o = Overlay::default();
        o.set("policy.poll", Some("30s")).unwrap();
        o.set::<u64>("swarm.upload_limit", None).unwrap();
        let c: GatewayConfig = load(Some(f.path()), "CUSTOMS_TEST_UNSET__", o).unwrap();
        assert_eq!(c.policy.poll, Duration::from_secs(30));
        assert_eq!(c.upstream.tag_ttl, Duration::from_secs(45));
        assert_eq!(c.audit.aggregate, Duration::from_secs(60));
        assert_eq!(c.swarm.upload_limit, 0);
    }

    #[test]
    fn secrets_are_never_echoed() {
        let f = file("upstream:\n  url: http://127.0.0.1:5000\napi:\n  token: 123456\n");
        let e = load::<GatewayConfig>(Some(f.path()), "CUSTOMS_TEST_UNSET__", Overlay::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("api.token") && !e.contains("123456"), "{e}");
        let mut v = serde_json::json!({"git": "https://bot:ghp_secret@git.example/p.git", "plain": "https://h/x"});
        redact_urls(&mut v);
        assert!(
            !v.to_string().contains("ghp_secret") && !v.to_string().contains("bot"),
            "{v}"
        );
        assert_eq!(v["plain"], "https://h/x");
    }

    #[test]
    fn errors_name_the_key() {
        for (text, want) in [
            ("policy:\n  pol: 3s\n", "pol"),
            ("polcy: {}\n", "polcy"),
            ("policy:\n  poll: soon\n", "policy.poll"),
            ("audit:\n  format: xml\n", "audit.format"),
            ("swarm:\n  upload_limit: -3\n", "swarm.upload_limit"),
        ] {
            let f = file(text);
            let e =
                load::<GatewayConfig>(Some(f.path()), "CUSTOMS_TEST_UNSET__", Overlay::default())
                    .unwrap_err()
                    .to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.contains("config file"), "{text:?}: {e}");
        }
    }
}
