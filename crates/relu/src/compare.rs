//! Alignment of two networks up to permutation and positive scaling; error report.
//! (Being written.)
