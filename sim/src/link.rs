//! One node's upload side: the piece server's admission rules (slots, one
//! upload and one waiting request per requester, a bounded queue with a
//! wait limit) in front of an upload link of fixed rate shared equally by
//! the active uploads (processor sharing: what a token-bucket limiter over
//! concurrent TCP streams converges to). Like the real limiter
//! (`customs_mirror::rate`), an idle link banks up to [`BURST`] of its
//! rate: the first bytes after a pause leave at once.

use std::collections::VecDeque;

/// Idle time the real rate limiter banks (`customs_mirror::rate`: "never
/// bank more than a short burst of idle time").
pub const BURST: f64 = 0.020;

/// A node index in the simulation (peers `0..N`, the seed `N`).
pub type NodeIx = usize;

/// One piece being uploaded.
#[derive(Debug, Clone)]
pub struct Flow {
    /// Who receives it.
    pub to: NodeIx,
    /// Which piece.
    pub piece: u32,
    remaining: f64,
}

/// A request waiting for a slot.
#[derive(Debug, Clone)]
struct Waiting {
    from: NodeIx,
    piece: u32,
    since: f64,
    len: f64,
}

/// What the piece server answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Bytes flow now.
    Started,
    /// It waits for a slot.
    Queued,
    /// 503: try another parent.
    Busy,
}

/// See the module docs.
#[derive(Debug)]
pub struct Uploader {
    rate: f64,
    slots: usize,
    queue_cap: usize,
    /// The longest a request waits before it is answered busy.
    slot_wait: f64,
    active: Vec<Flow>,
    queue: VecDeque<Waiting>,
    last: f64,
    /// Idle seconds banked (at most [`BURST`]).
    bank: f64,
    /// Bumped whenever the next completion time may have changed; an
    /// event carrying an older value is stale.
    pub generation: u64,
    /// Bytes sent so far.
    pub sent: f64,
}

impl Uploader {
    /// A link of `rate` bytes/s with the piece server's `slots` and queue.
    pub fn new(rate: f64, slots: usize, queue_cap: usize, slot_wait: f64) -> Self {
        Uploader {
            rate,
            slots,
            queue_cap,
            slot_wait,
            active: Vec::new(),
            queue: VecDeque::new(),
            last: 0.0,
            bank: BURST,
            generation: 0,
            sent: 0.0,
        }
    }

    /// Uploads running now (what the node announces as `active_uploads`).
    pub fn active(&self) -> usize {
        self.active.len()
    }

    fn advance(&mut self, now: f64) {
        let dt = now - self.last;
        if dt > 0.0 && self.active.is_empty() {
            self.bank = (self.bank + dt).min(BURST);
        }
        if dt > 0.0 && !self.active.is_empty() {
            let each = self.rate / self.active.len() as f64 * dt;
            for f in &mut self.active {
                let moved = each.min(f.remaining);
                f.remaining -= moved;
                self.sent += moved;
            }
        }
        self.last = now;
    }

    fn uploading_to(&self, who: NodeIx) -> bool {
        self.active.iter().any(|f| f.to == who)
    }

    /// A request from `from` for `piece` of `len` bytes arrives at `now`.
    pub fn offer(&mut self, now: f64, from: NodeIx, piece: u32, len: f64) -> Offer {
        if self.rate <= 0.0 {
            return Offer::Busy;
        }
        self.advance(now);
        if self.active.len() < self.slots && !self.uploading_to(from) {
            let remaining = self.spend_bank(len);
            self.active.push(Flow {
                to: from,
                piece,
                remaining,
            });
            self.generation += 1;
            return Offer::Started;
        }
        let mine = self.queue.iter().filter(|w| w.from == from).count();
        if self.queue.len() < self.queue_cap && mine < 1 {
            self.queue.push_back(Waiting {
                from,
                piece,
                since: now,
                len,
            });
            return Offer::Queued;
        }
        Offer::Busy
    }

    /// What is left of `len` bytes once a link that was idle spends its
    /// banked burst on them.
    fn spend_bank(&mut self, len: f64) -> f64 {
        if !self.active.is_empty() {
            return len;
        }
        let burst = (self.bank * self.rate).min(len);
        self.bank = 0.0;
        self.sent += burst;
        len - burst
    }

    /// When the next upload ends, if one runs.
    pub fn next_completion(&self) -> Option<f64> {
        let each = self.rate / self.active.len().max(1) as f64;
        self.active
            .iter()
            .map(|f| self.last + f.remaining / each)
            .min_by(f64::total_cmp)
    }

    /// Ends the uploads finished by `now` and starts waiting requests in
    /// their slots: (finished, started from the queue, timed out waiting).
    pub fn settle(&mut self, now: f64) -> (Vec<Flow>, Vec<Flow>, Vec<(NodeIx, u32)>) {
        self.advance(now);
        // Within a nanosecond of bytes at this rate: done (event times are
        // rounded to nanoseconds).
        let eps = self.rate * 2e-9 + 1e-6;
        let (done, running): (Vec<Flow>, Vec<Flow>) =
            self.active.drain(..).partition(|f| f.remaining <= eps);
        self.active = running;
        let mut timed_out = Vec::new();
        let mut started = Vec::new();
        let mut kept = VecDeque::new();
        while let Some(w) = self.queue.pop_front() {
            if now - w.since >= self.slot_wait {
                timed_out.push((w.from, w.piece));
            } else if self.active.len() < self.slots && !self.uploading_to(w.from) {
                let f = Flow {
                    to: w.from,
                    piece: w.piece,
                    remaining: w.len,
                };
                self.active.push(f.clone());
                started.push(f);
            } else {
                kept.push_back(w);
            }
        }
        self.queue = kept;
        if !done.is_empty() || !started.is_empty() {
            self.generation += 1;
        }
        (done, started, timed_out)
    }

    /// The node left: every upload and waiting request fails; returns
    /// their requesters and pieces.
    pub fn fail_all(&mut self) -> Vec<(NodeIx, u32)> {
        self.generation += 1;
        let mut out: Vec<(NodeIx, u32)> = self.active.drain(..).map(|f| (f.to, f.piece)).collect();
        out.extend(self.queue.drain(..).map(|w| (w.from, w.piece)));
        self.rate = 0.0;
        out
    }
}
