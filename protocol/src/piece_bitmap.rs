//! Which pieces of a blob a node holds, in the form the scheduler protocol
//! carries (`Parent.pieces`): bit `i % 8` of byte `i / 8` is piece `i`.
//! One type for the scheduler, which records reports, and the peers, which
//! read parents' bitmaps, so the two can never disagree on the layout.

/// See the module docs. Bits beyond the bitmap's bytes are unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PieceBitmap(Vec<u8>);

impl PieceBitmap {
    /// An empty bitmap.
    pub fn new() -> Self {
        PieceBitmap(Vec::new())
    }

    /// A bitmap as received on the wire. Its length is whatever the sender
    /// sent: the scheduler bounds what it stores (`report_pieces` refuses
    /// indices beyond the task), and a peer only ever asks about pieces of
    /// its own verified manifest.
    pub fn from_wire(bytes: Vec<u8>) -> Self {
        PieceBitmap(bytes)
    }

    /// The wire form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// True when piece `i` is set.
    pub fn has(&self, i: u32) -> bool {
        self.0
            .get((i / 8) as usize)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    /// Sets piece `i`, growing the bitmap to hold it.
    pub fn set(&mut self, i: u32) {
        let byte = (i / 8) as usize;
        if self.0.len() <= byte {
            self.0.resize(byte + 1, 0);
        }
        self.0[byte] |= 1 << (i % 8);
    }

    /// Sets every piece `other` has.
    pub fn union_with(&mut self, other: &PieceBitmap) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    /// How many pieces are set.
    pub fn count(&self) -> usize {
        self.0.iter().map(|b| b.count_ones() as usize).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_laid_out_as_the_protocol_says() {
        let mut b = PieceBitmap::new();
        for i in [0, 7, 8, 17] {
            b.set(i);
        }
        assert_eq!(b.as_bytes(), &[0b1000_0001, 0b0000_0001, 0b0000_0010]);
        assert!(b.has(17) && b.has(8) && !b.has(9) && !b.has(1000));
        assert_eq!(b.count(), 4);
        assert_eq!(PieceBitmap::from_wire(b.as_bytes().to_vec()), b);
    }
}
