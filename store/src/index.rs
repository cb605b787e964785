//! The redb index: small typed records keyed by strings.
//!
//! redb is ACID and durable on `commit()`, so a record written here (a tag,
//! a binding made by admission) survives a crash the moment the call returns.

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};
use std::path::Path;
use std::sync::Arc;

/// The tables Customs keeps. A closed set, so no caller can invent a table
/// name at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// digest → blob metadata (size, media type, last access).
    Blobs,
    /// `registry/repo:tag` → cached tag resolution.
    Tags,
    /// `registry/repo@digest` → binding of content to a repository, written
    /// by admission (config, layers, index children).
    Bindings,
    /// `registry/repo@digest` → the admission decision for a manifest.
    Admissions,
    /// digest → how a stored manifest is served (its media type).
    Manifests,
    /// blob digest → the gateway-signed piece manifest for it.
    PieceManifests,
    /// Small facts a node keeps across restarts (the newest policy
    /// revision it has seen from its gateway).
    NodeState,
}

impl Table {
    /// Every table, created when the index is opened.
    pub const ALL: [Table; 7] = [
        Table::Blobs,
        Table::Tags,
        Table::Bindings,
        Table::Admissions,
        Table::Manifests,
        Table::PieceManifests,
        Table::NodeState,
    ];

    fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        TableDefinition::new(match self {
            Table::Blobs => "blobs",
            Table::Tags => "tags",
            Table::Bindings => "bindings",
            Table::Admissions => "admissions",
            Table::Manifests => "manifests",
            Table::PieceManifests => "piece_manifests",
            Table::NodeState => "node_state",
        })
    }
}

/// Why an index operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// redb reported an error (I/O, corruption, lock).
    #[error("index database: {0}")]
    Db(String),
    /// A record did not decode: the index was written by something else.
    #[error("index record in {table:?} for {key:?} is corrupt: {source}")]
    Corrupt {
        /// Which table.
        table: Table,
        /// Which key.
        key: String,
        /// The decode error.
        source: serde_json::Error,
    },
}

fn db_err(e: impl std::fmt::Display) -> IndexError {
    IndexError::Db(e.to_string())
}

/// A handle to the index; cheap to clone.
#[derive(Clone)]
pub struct Index {
    db: Arc<Database>,
}

impl Index {
    /// Opens or creates the index at `path`, creating every table so reads
    /// never fail on a fresh database.
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        let db = Database::create(path).map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        for t in Table::ALL {
            tx.open_table(t.def()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(Index { db: Arc::new(db) })
    }

    /// Reads one record.
    pub fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<T>, IndexError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(table.def()).map_err(db_err)?;
        let Some(v) = t.get(key).map_err(db_err)? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|source| IndexError::Corrupt {
                table,
                key: key.to_owned(),
                source,
            })
    }

    /// Writes several records in one durable transaction.
    pub fn put_many<T: Serialize>(
        &self,
        table: Table,
        records: &[(String, T)],
    ) -> Result<(), IndexError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(table.def()).map_err(db_err)?;
            for (k, v) in records {
                let bytes = serde_json::to_vec(v).map_err(db_err)?;
                t.insert(k.as_str(), bytes.as_slice()).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Writes one record durably.
    pub fn put<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<(), IndexError> {
        let bytes = serde_json::to_vec(value).map_err(db_err)?;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(table.def()).map_err(db_err)?;
            t.insert(key, bytes.as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Removes records; missing keys are fine.
    pub fn remove_many(&self, table: Table, keys: &[String]) -> Result<(), IndexError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(table.def()).map_err(db_err)?;
            for k in keys {
                t.remove(k.as_str()).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    /// Every record of a table (used by garbage collection and start-up).
    pub fn scan<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<(String, T)>, IndexError> {
        use redb::ReadableTable;
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(table.def()).map_err(db_err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let key = k.value().to_owned();
            let val = serde_json::from_slice(v.value()).map_err(|source| IndexError::Corrupt {
                table,
                key: key.clone(),
                source,
            })?;
            out.push((key, val));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index.redb");
        {
            let idx = Index::open(&p).unwrap();
            idx.put(Table::Tags, "r/a:latest", &"x".to_string())
                .unwrap();
            idx.put_many(Table::Bindings, &[("k1".into(), 1u32), ("k2".into(), 2u32)])
                .unwrap();
        }
        let idx = Index::open(&p).unwrap();
        assert_eq!(
            idx.get::<String>(Table::Tags, "r/a:latest")
                .unwrap()
                .as_deref(),
            Some("x")
        );
        assert_eq!(idx.scan::<u32>(Table::Bindings).unwrap().len(), 2);
        idx.remove_many(Table::Bindings, &["k1".into()]).unwrap();
        assert_eq!(idx.get::<u32>(Table::Bindings, "k1").unwrap(), None);
        assert!(matches!(
            idx.get::<u32>(Table::Tags, "r/a:latest"),
            Err(IndexError::Corrupt { .. })
        ));
    }
}
