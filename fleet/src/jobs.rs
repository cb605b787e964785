//! Preheat jobs shared by every gateway: a job created on one is visible,
//! pollable and completed through any other, and outlives gateway
//! restarts. Records are opaque JSON here; the gateway validates what it
//! reads back (a record is a status report, never an instruction to admit
//! or fetch anything).

use crate::{Fleet, FleetError};
use std::time::Duration;

/// How long a job record is kept after its last update.
pub const JOB_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Largest job record read back: anything longer is not one Customs wrote.
pub const MAX_JOB_BYTES: usize = 1 << 20;

impl Fleet {
    fn job_key(&self, id: u64) -> String {
        self.key(&format!("preheat:job:{id}"))
    }

    /// A new job id, unique across the fleet.
    pub async fn next_job_id(&self) -> Result<u64, FleetError> {
        let id: i64 = self
            .run(redis::cmd("INCR").arg(self.key("preheat:next-id")))
            .await?;
        u64::try_from(id)
            .ok()
            .filter(|&id| id > 0)
            .ok_or_else(|| FleetError::Malformed {
                key: self.key("preheat:next-id"),
                reason: format!("counter at {id}"),
            })
    }

    /// Writes job `id`'s record (kept [`JOB_TTL`] after this write).
    pub async fn put_job(&self, id: u64, record: &[u8]) -> Result<(), FleetError> {
        self.run::<()>(
            redis::cmd("SET")
                .arg(self.job_key(id))
                .arg(record)
                .arg("EX")
                .arg(JOB_TTL.as_secs()),
        )
        .await
    }

    /// Job `id`'s record, if there is one; at most [`MAX_JOB_BYTES`] are
    /// read, a longer value is refused as malformed.
    pub async fn get_job(&self, id: u64) -> Result<Option<Vec<u8>>, FleetError> {
        let key = self.job_key(id);
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS")
            .arg(&key)
            .cmd("GETRANGE")
            .arg(&key)
            .arg(0)
            .arg(MAX_JOB_BYTES);
        let (exists, value): (i64, Vec<u8>) = self.run_pipe(&pipe).await?;
        if exists == 0 {
            return Ok(None);
        }
        if value.len() > MAX_JOB_BYTES {
            return Err(FleetError::Malformed {
                key,
                reason: format!("longer than {MAX_JOB_BYTES} bytes"),
            });
        }
        Ok(Some(value))
    }
}
