//! A node's place in the fleet (zone and rack) read from Kubernetes
//! topology labels, so peers and gateways on Kubernetes need no per-node
//! flags: the pod's labels file from a downward-API volume
//! (`fieldRef: metadata.labels`; Kubernetes ≥ 1.33 copies the node's
//! `topology.kubernetes.io/zone` onto the pod with the
//! `PodTopologyLabels` admission plugin) or a file node-init writes from
//! the node object, both in the downward API's `key="value"` line format.
//!
//! Written by hand: the format is one line per label and no crate parses
//! it. The file is local but written by other software, so it is bounded
//! and checked: a malformed line is an error naming its line, never a
//! guess.

use std::path::Path;

/// Labels read for the zone, best first.
pub const ZONE_LABELS: [&str; 2] = [
    "topology.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/zone",
];
/// Labels read for the rack (Kubernetes has no standard one), best first.
pub const RACK_LABELS: [&str; 2] = ["topology.customs.dev/rack", "topology.kubernetes.io/rack"];
/// Largest labels file read.
pub const MAX_LABELS_FILE: u64 = 256 * 1024;
/// Longest zone or rack value (the scheduler refuses longer ones).
pub const MAX_VALUE_LEN: usize = 63;

/// A node's zone and rack (empty: not known).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Its zone.
    pub zone: String,
    /// Its rack within the zone.
    pub rack: String,
}

/// Why a labels file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// It could not be read.
    #[error("reading topology labels {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// It is larger than [`MAX_LABELS_FILE`].
    #[error("topology labels {path}: larger than {MAX_LABELS_FILE} bytes")]
    TooLarge {
        /// The file.
        path: String,
    },
    /// A line is not `key="value"`.
    #[error("topology labels line {line}: not key=\"value\"")]
    Malformed {
        /// 1-based line number.
        line: usize,
    },
    /// A zone or rack value is not a Kubernetes label value.
    #[error(
        "topology label {key} (line {line}): not a label value of at most {MAX_VALUE_LEN} characters [A-Za-z0-9._-]"
    )]
    BadValue {
        /// The label.
        key: String,
        /// 1-based line number.
        line: usize,
    },
}

impl Topology {
    /// Reads a labels file (see the module doc).
    pub fn from_file(path: &Path) -> Result<Topology, TopologyError> {
        use std::io::Read;
        let shown = path.display().to_string();
        let read_err = |source| TopologyError::Read {
            path: shown.clone(),
            source,
        };
        let f = std::fs::File::open(path).map_err(read_err)?;
        let mut text = String::new();
        f.take(MAX_LABELS_FILE + 1)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        if text.len() as u64 > MAX_LABELS_FILE {
            return Err(TopologyError::TooLarge { path: shown });
        }
        Topology::from_labels(&text)
    }

    /// Parses the downward API's labels text: one `key="value"` per line
    /// (blank lines ignored); the zone and rack come from the first of
    /// [`ZONE_LABELS`] / [`RACK_LABELS`] present.
    pub fn from_labels(text: &str) -> Result<Topology, TopologyError> {
        let mut zone: Option<(usize, String)> = None;
        let mut rack: Option<(usize, String)> = None;
        for (n, line) in text.lines().enumerate() {
            let line_no = n + 1;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (key, value) =
                parse_line(line).ok_or(TopologyError::Malformed { line: line_no })?;
            for (wanted, slot) in [(&ZONE_LABELS, &mut zone), (&RACK_LABELS, &mut rack)] {
                let Some(rank) = wanted.iter().position(|k| *k == key) else {
                    continue;
                };
                if !is_label_value(&value) {
                    return Err(TopologyError::BadValue {
                        key: key.to_owned(),
                        line: line_no,
                    });
                }
                if slot.as_ref().is_none_or(|(r, _)| rank < *r) {
                    *slot = Some((rank, value.clone()));
                }
            }
        }
        Ok(Topology {
            zone: zone.map(|(_, v)| v).unwrap_or_default(),
            rack: rack.map(|(_, v)| v).unwrap_or_default(),
        })
    }
}

/// `key="value"` with Go's `%q` escapes for `\"` and `\\`.
fn parse_line(line: &str) -> Option<(&str, String)> {
    let (key, rest) = line.split_once('=')?;
    let inner = rest.strip_prefix('"')?.strip_suffix('"')?;
    let mut value = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                e @ ('"' | '\\') => value.push(e),
                _ => return None,
            },
            '"' => return None,
            c => value.push(c),
        }
    }
    (!key.is_empty()).then_some((key, value))
}

/// A Kubernetes label value: empty, or at most 63 characters of
/// `[A-Za-z0-9._-]` beginning and ending with an alphanumeric.
fn is_label_value(v: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    v.is_empty()
        || (v.len() <= MAX_VALUE_LEN
            && v.starts_with(alnum)
            && v.ends_with(alnum)
            && v.chars().all(|c| alnum(c) || matches!(c, '.' | '_' | '-')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_zone_and_rack_from_a_downward_api_labels_file() {
        let text = "app=\"customs\"\npod-template-hash=\"5d8f\"\n\
                    failure-domain.beta.kubernetes.io/zone=\"old-zone\"\n\
                    topology.customs.dev/rack=\"r12\"\n\
                    topology.kubernetes.io/zone=\"eu-west-1a\"\n";
        let t = Topology::from_labels(text).unwrap();
        assert_eq!(t.zone, "eu-west-1a", "the standard label wins");
        assert_eq!(t.rack, "r12");
        assert_eq!(Topology::from_labels("").unwrap(), Topology::default());
    }

    #[test]
    fn a_malformed_line_or_a_hostile_value_is_refused_naming_its_line() {
        for (text, line) in [
            ("a=\"b\"\nno-equals\n", 2),
            ("topology.kubernetes.io/zone=unquoted", 1),
            ("x=\"a\\nb\"", 1),
            ("x=\"a\"b\"", 1),
        ] {
            match Topology::from_labels(text) {
                Err(TopologyError::Malformed { line: l }) => assert_eq!(l, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        for v in ["a b", "-a", &"z".repeat(64), "zone\\\"x"] {
            let text = format!("topology.kubernetes.io/zone=\"{v}\"");
            assert!(
                matches!(
                    Topology::from_labels(&text),
                    Err(TopologyError::BadValue { line: 1, .. })
                ),
                "{v}"
            );
        }
    }

    #[test]
    fn an_oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("labels");
        std::fs::write(&p, "a=\"b\"\n".repeat(60_000)).unwrap();
        assert!(matches!(
            Topology::from_file(&p),
            Err(TopologyError::TooLarge { .. })
        ));
        assert!(matches!(
            Topology::from_file(&dir.path().join("missing")),
            Err(TopologyError::Read { .. })
        ));
    }

    proptest! {
        #[test]
        fn any_text_parses_or_errs_and_values_are_label_values(text in "(?s).{0,400}") {
            if let Ok(t) = Topology::from_labels(&text) {
                prop_assert!(is_label_value(&t.zone) && is_label_value(&t.rack));
            }
        }

        #[test]
        fn written_labels_read_back(zone in "[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", rack in "[A-Z0-9]{1,8}") {
            let text = format!("topology.kubernetes.io/zone=\"{zone}\"\ntopology.kubernetes.io/rack=\"{rack}\"\n");
            let t = Topology::from_labels(&text).unwrap();
            prop_assert_eq!(t.zone, zone);
            prop_assert_eq!(t.rack, rack);
        }
    }
}
