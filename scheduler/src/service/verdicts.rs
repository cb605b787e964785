//! Certificate checks remembered per (certificate, question). Deciding
//! whether a client certificate may speak for a peer id parses it and
//! matches up to eight names with webpki; at the scheduler's request rate
//! that cost more than the request it guards. The verdict depends on the
//! certificate's bytes and the question alone (its chain and validity were
//! checked at the TLS handshake), so remembering it changes no decision:
//! the whole certificate is compared on a hit, never a hash alone.

use customs_protocol::peer_id::PeerId;
use customs_tls::Role;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use tonic::transport::CertificateDer;

/// Verdicts kept; the table is emptied when full (a fleet has one
/// certificate per node: 10,000 nodes need about as many entries).
pub const MAX_VERDICTS: usize = 16_384;

/// What is asked of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Question {
    /// May it speak for this id ([`super::may_speak_for`])?
    SpeaksFor(PeerId),
    /// Does it hold exactly this role ([`customs_tls::has_role`])?
    HasRole(RoleKey),
}

/// [`Role`] as a hashable key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum RoleKey {
    Gateway,
    Peer,
    Scheduler,
}

impl From<Role> for RoleKey {
    fn from(r: Role) -> Self {
        match r {
            Role::Gateway => RoleKey::Gateway,
            Role::Peer => RoleKey::Peer,
            Role::Scheduler => RoleKey::Scheduler,
        }
    }
}

struct Entry {
    der: Box<[u8]>,
    question: Question,
    verdict: bool,
}

/// See the module docs.
#[derive(Default)]
pub(super) struct Verdicts {
    keys: std::hash::RandomState,
    table: Mutex<HashMap<u64, Vec<Entry>>>,
}

impl Verdicts {
    /// The verdict of `check` on `cert` for `question`, computed once.
    pub(super) fn answer(
        &self,
        cert: &CertificateDer<'_>,
        question: Question,
        check: impl FnOnce(&CertificateDer<'_>, &Question) -> bool,
    ) -> bool {
        let der: &[u8] = cert.as_ref();
        let key = self.keys.hash_one((der, &question));
        if let Some(v) = self.lookup(key, der, &question) {
            return v;
        }
        let verdict = check(cert, &question);
        let mut table = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if table.len() >= MAX_VERDICTS {
            table.clear();
        }
        table.entry(key).or_default().push(Entry {
            der: der.into(),
            question,
            verdict,
        });
        verdict
    }

    fn lookup(&self, key: u64, der: &[u8], question: &Question) -> Option<bool> {
        let table = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        table
            .get(&key)?
            .iter()
            .find(|e| &*e.der == der && e.question == *question)
            .map(|e| e.verdict)
    }

    /// Entries kept (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .map(Vec::len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_verdict_is_computed_once_per_certificate_and_question() {
        let v = Verdicts::default();
        let calls = AtomicUsize::new(0);
        let a = CertificateDer::from(vec![1u8, 2, 3]);
        let b = CertificateDer::from(vec![1u8, 2, 4]);
        let q = |s: &str| Question::SpeaksFor(PeerId::parse(s).unwrap());
        let check = |c: &CertificateDer<'_>, q: &Question| {
            calls.fetch_add(1, Ordering::Relaxed);
            c.as_ref() == [1, 2, 3] && *q == Question::SpeaksFor(PeerId::parse("x").unwrap())
        };
        assert!(v.answer(&a, q("x"), check));
        assert!(v.answer(&a, q("x"), check));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        // Another certificate or another question is asked anew.
        assert!(!v.answer(&b, q("x"), check));
        assert!(!v.answer(&a, q("y"), check));
        assert!(!v.answer(&a, Question::HasRole(RoleKey::Gateway), check));
        assert_eq!(calls.load(Ordering::Relaxed), 4);
        assert_eq!(v.len(), 4);
    }
}
