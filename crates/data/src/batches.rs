//! Seeded, shuffled mini-batch indices.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;

/// The permutation of `0..n` used for epoch `epoch`: a ChaCha20 stream keyed by `seed`, stream number
/// `epoch`, so any epoch's order can be reproduced directly without replaying the earlier ones.
pub fn epoch_permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rng);
    idx
}

/// Iterator over the shuffled mini-batches (index lists) of one epoch.
///
/// ```
/// use netxray_data::Batches;
/// let all: Vec<usize> = Batches::new(10, 4, 1, 0).flatten().collect();
/// assert_eq!(all.len(), 10);
/// assert_eq!(Batches::new(10, 4, 1, 0).drop_last(true).count(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct Batches {
    order: Vec<usize>,
    batch_size: usize,
    pos: usize,
    drop_last: bool,
}

impl Batches {
    /// The batches of epoch `epoch` over `n` samples, shuffled with `seed` (see [`epoch_permutation`]).
    /// By default the last, smaller batch is kept.
    ///
    /// # Panics
    /// If `batch_size` is zero (like [`slice::chunks`]).
    pub fn new(n: usize, batch_size: usize, seed: u64, epoch: u64) -> Self {
        assert!(batch_size > 0, "batch size must be at least 1");
        Self {
            order: epoch_permutation(n, seed, epoch),
            batch_size,
            pos: 0,
            drop_last: false,
        }
    }

    /// Whether to skip a final batch smaller than the batch size.
    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    /// Number of batches this iterator yields in total.
    pub fn num_batches(&self) -> usize {
        let n = self.order.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// The whole permutation of the epoch.
    pub fn order(&self) -> &[usize] {
        &self.order
    }
}

impl Iterator for Batches {
    type Item = Vec<usize>;
    fn next(&mut self) -> Option<Vec<usize>> {
        let rest = self.order.len() - self.pos;
        if rest == 0 || (self.drop_last && rest < self.batch_size) {
            return None;
        }
        let take = rest.min(self.batch_size);
        let b = self.order[self.pos..self.pos + take].to_vec();
        self.pos += take;
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_every_index_once_and_is_reproducible() {
        let b: Vec<Vec<usize>> = Batches::new(103, 10, 5, 2).collect();
        assert_eq!(b.len(), 11);
        assert_eq!(b.last().unwrap().len(), 3);
        let mut all: Vec<usize> = b.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
        assert_eq!(b, Batches::new(103, 10, 5, 2).collect::<Vec<_>>());
        assert_ne!(epoch_permutation(103, 5, 2), epoch_permutation(103, 5, 3));
        assert_ne!(epoch_permutation(103, 5, 2), epoch_permutation(103, 6, 2));
    }

    #[test]
    fn drop_last_skips_the_short_batch() {
        let it = Batches::new(103, 10, 5, 0).drop_last(true);
        assert_eq!(it.num_batches(), 10);
        let b: Vec<_> = it.collect();
        assert_eq!(b.len(), 10);
        assert!(b.iter().all(|x| x.len() == 10));
        assert_eq!(Batches::new(0, 4, 0, 0).count(), 0);
        assert_eq!(Batches::new(100, 10, 0, 0).drop_last(true).count(), 10);
    }
}
