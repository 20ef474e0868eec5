//! The only door to the target: [`Oracle`]. Queries in, outputs out, every row counted.
//!
//! The attack is generic over `O: Oracle + ?Sized` and never receives anything else about the target.
//! [`NetworkOracle`] wraps a local model behind the trait; its network is a private field of this module,
//! so no attack code can read the weights (the type system enforces the threat model).

use crate::error::OracleError;
use faer::{Mat, MatRef};
use netxray_relu::{Network, NetworkF32};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A black-box model: batched queries, raw real-valued outputs.
pub trait Oracle: Sync {
    /// Input width.
    fn input_dim(&self) -> usize;
    /// Output width.
    fn output_dim(&self) -> usize;
    /// Evaluates one input per row (`n × input_dim`), returning `n × output_dim`. One row is one query.
    fn query_batch(&self, xs: MatRef<'_, f64>) -> Result<Mat<f64>, OracleError>;
}

/// A local model hidden behind the [`Oracle`] trait. Exposes nothing but the dimensions and answers.
pub struct NetworkOracle {
    net: Hidden,
}

enum Hidden {
    F64(Network),
    F32(NetworkF32),
}

impl NetworkOracle {
    /// Hides `net` behind the oracle interface; answers are computed in f64.
    pub fn new(net: Network) -> Self {
        Self {
            net: Hidden::F64(net),
        }
    }

    /// Hides `net` and answers as its float32 deployment would: parameters, inputs and arithmetic in
    /// f32 (~2^-24 relative noise on every answer).
    pub fn new_f32(net: &Network) -> Self {
        Self {
            net: Hidden::F32(NetworkF32::new(net)),
        }
    }
}

impl Oracle for NetworkOracle {
    fn input_dim(&self) -> usize {
        match &self.net {
            Hidden::F64(n) => n.input_dim(),
            Hidden::F32(n) => n.input_dim(),
        }
    }
    fn output_dim(&self) -> usize {
        match &self.net {
            Hidden::F64(n) => n.output_dim(),
            Hidden::F32(n) => n.output_dim(),
        }
    }
    fn query_batch(&self, xs: MatRef<'_, f64>) -> Result<Mat<f64>, OracleError> {
        match &self.net {
            Hidden::F64(n) => n.forward(xs),
            Hidden::F32(n) => n.forward(xs),
        }
        .map_err(|e| OracleError::BadAnswer(e.to_string()))
    }
}

/// Default number of recent (query, answer) pairs kept (for inspection after a failure). Bounded so
/// that long extractions never hoard queries.
pub const DEFAULT_LOG_CAPACITY: usize = 4096;

/// Bytes of inputs and answers the query log may hold: on wide inputs fewer than
/// [`DEFAULT_LOG_CAPACITY`] rows are kept (42 at 3072 inputs, ~165 at 784), because copying every
/// batch's last 4,096 rows into the log was a tenth of a 3072-input extraction's time.
pub const MAX_LOG_BYTES: usize = 1 << 20;

/// Batches of at least this many input values are checked and hashed on all cores; below it the
/// thread pool's hand-off would cost more than the work (the 784-16×8-1's bisection levels send
/// batches of a few rows).
pub(crate) const PARALLEL_CHECK_VALUES: usize = 1 << 16;

/// Whether every entry is finite, read in memory order (a row-major batch of 1,360 × 3,072 read
/// column by column was a tenth of a 3072-input extraction's time in a profile).
/// (Large batches on all cores; each line folded without an early exit so the check vectorises.)
fn all_finite(xs: MatRef<'_, f64>) -> bool {
    use rayon::prelude::*;
    let by_rows = xs.col_stride() == 1;
    let line_ok = |i: usize| {
        let ok = |acc: bool, v: &f64| acc & v.is_finite();
        if by_rows {
            xs.row(i).iter().fold(true, ok)
        } else {
            xs.col(i).iter().fold(true, ok)
        }
    };
    let lines = if by_rows { xs.nrows() } else { xs.ncols() };
    if xs.nrows() * xs.ncols() < PARALLEL_CHECK_VALUES {
        (0..lines).all(line_ok)
    } else {
        (0..lines).into_par_iter().all(line_ok)
    }
}

/// Largest batch sent to the target in one call, in bytes of input rows (~5,300 rows of 784 inputs,
/// ~1,360 of 3072): large enough that the target's GEMM runs at full speed and per-call overheads vanish, small
/// enough that a caller with 10^5 points in flight stays bounded (layer 8 of a 784-16×8-1 net held
/// one bisection level of ~10^5 points at once, gigabytes, and the process reached 24 GiB).
pub const MAX_BATCH_BYTES: usize = 32 << 20;

/// Wraps any oracle: validates queries and answers, counts rows, enforces an optional budget, attributes
/// queries to the current stage, and keeps a bounded log of recent pairs.
pub struct CountingOracle<'a, O: Oracle + ?Sized> {
    inner: &'a O,
    used: AtomicU64,
    /// Nanoseconds spent inside `inner.query_batch` (the target's own time, not the attack's).
    target_nanos: AtomicU64,
    budget: Option<u64>,
    log: Mutex<VecDeque<(Vec<f64>, Vec<f64>)>>,
    log_capacity: usize,
}

impl<'a, O: Oracle + ?Sized> CountingOracle<'a, O> {
    /// Wraps `inner` with an optional query budget.
    pub fn new(inner: &'a O, budget: Option<u64>) -> Self {
        Self {
            inner,
            used: AtomicU64::new(0),
            target_nanos: AtomicU64::new(0),
            budget,
            log: Mutex::new(VecDeque::new()),
            log_capacity: DEFAULT_LOG_CAPACITY
                .min(MAX_LOG_BYTES / (8 * (inner.input_dim() + inner.output_dim()).max(1))),
        }
    }

    /// Counts `used` queries as already spent (a resumed extraction carries its earlier cost; they count
    /// against the budget too).
    pub fn with_used(self, used: u64) -> Self {
        self.used.store(used, Ordering::SeqCst);
        self
    }

    /// Queries answered so far.
    pub fn queries(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Wall seconds spent waiting for the target's answers so far (all callers together; batches
    /// sent from several threads at once are each counted in full). The rest of an extraction's
    /// time is the attack's own computation, so this splits "the oracle is slow" from "the attack
    /// is slow".
    pub fn target_seconds(&self) -> f64 {
        self.target_nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }

    /// Input width of the target.
    pub fn input_dim(&self) -> usize {
        self.inner.input_dim()
    }

    /// Output width of the target.
    pub fn output_dim(&self) -> usize {
        self.inner.output_dim()
    }

    /// A copy of the recent (query, answer) log, oldest first (at most the log capacity).
    pub fn recent_log(&self) -> Vec<(Vec<f64>, Vec<f64>)> {
        self.log.lock().expect("log lock").iter().cloned().collect()
    }

    /// Queries a batch (rows). Checks shape and finiteness both ways; counts before asking so that a
    /// budget is never overrun.
    pub fn query(&self, xs: MatRef<'_, f64>) -> Result<Mat<f64>, OracleError> {
        let n = xs.nrows() as u64;
        if n == 0 {
            return Ok(Mat::zeros(0, self.output_dim()));
        }
        if xs.ncols() != self.input_dim() {
            return Err(OracleError::BadShape {
                got: xs.ncols(),
                expected: self.input_dim(),
            });
        }
        if !all_finite(xs) {
            return Err(OracleError::NonFinite);
        }
        let before = self.used.fetch_add(n, Ordering::SeqCst);
        if let Some(b) = self.budget
            && before + n > b
        {
            self.used.fetch_sub(n, Ordering::SeqCst);
            return Err(OracleError::BudgetExhausted {
                budget: b,
                used: before,
            });
        }
        let started = std::time::Instant::now();
        let ys = self.inner.query_batch(xs)?;
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.target_nanos.fetch_add(nanos, Ordering::Relaxed);
        if ys.nrows() != xs.nrows() || ys.ncols() != self.output_dim() {
            return Err(OracleError::BadAnswer(format!(
                "expected {}x{} answer, got {}x{}",
                xs.nrows(),
                self.output_dim(),
                ys.nrows(),
                ys.ncols()
            )));
        }
        for j in 0..ys.ncols() {
            if ys.col(j).iter().any(|v| !v.is_finite()) {
                return Err(OracleError::BadAnswer("non-finite output".into()));
            }
        }
        if self.log_capacity > 0 {
            let mut log = self.log.lock().expect("log lock");
            // Keep only the last `log_capacity` rows of this batch; older entries fall out first.
            let start = xs.nrows().saturating_sub(self.log_capacity);
            for r in start..xs.nrows() {
                if log.len() == self.log_capacity {
                    log.pop_front();
                }
                let x: Vec<f64> = xs.row(r).iter().copied().collect();
                let y: Vec<f64> = ys.row(r).iter().copied().collect();
                log.push_back((x, y));
            }
        }
        Ok(ys)
    }

    /// Queries a list of points given as vectors.
    pub fn query_points(&self, pts: &[Vec<f64>]) -> Result<Vec<Vec<f64>>, OracleError> {
        let d = self.input_dim();
        if let Some(p) = pts.iter().find(|p| p.len() != d) {
            return Err(OracleError::BadShape {
                got: p.len(),
                expected: d,
            });
        }
        self.query_generated(pts.len(), |i, row| row.copy_from_slice(&pts[i]))
    }

    /// Queries `n` points that `fill(i, row)` writes on demand, in batches of at most
    /// [`MAX_BATCH_BYTES`] of inputs, so that a caller with 10^5 points (one bisection level over every
    /// segment of a deep layer's lines) never holds them all at once. Answers in order, one row each.
    pub fn query_generated(
        &self,
        n: usize,
        mut fill: impl FnMut(usize, &mut [f64]),
    ) -> Result<Vec<Vec<f64>>, OracleError> {
        let d = self.input_dim();
        let chunk = (MAX_BATCH_BYTES / (8 * d.max(1))).max(1);
        let mut out = Vec::with_capacity(n);
        let mut buf = Vec::new();
        let mut start = 0;
        while start < n {
            let rows = chunk.min(n - start);
            // Row-major, so each row is written (and hashed, logged) contiguously: scattering rows
            // into a column-major matrix cost as much as the forward pass on 3072 inputs.
            buf.clear();
            buf.resize(rows * d, 0.0);
            for (i, row) in buf.chunks_exact_mut(d.max(1)).enumerate().take(rows) {
                fill(start + i, row);
            }
            let y = self.query(MatRef::from_row_major_slice(&buf, rows, d))?;
            out.extend((0..y.nrows()).map(|i| (0..y.ncols()).map(|j| y[(i, j)]).collect()));
            start += rows;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netxray_relu::{Arch, InitRecipe};

    #[test]
    fn generated_batches_are_split_but_answer_every_row_in_order() {
        // 4096 inputs: a batch of MAX_BATCH_BYTES holds 1024 rows, so 2500 rows take three calls.
        let d = 4096;
        let net = Network::random(
            &format!("{d}-3-2").parse::<Arch>().unwrap(),
            InitRecipe::He,
            2,
        );
        let o = NetworkOracle::new(net);
        let c = CountingOracle::new(&o, None);
        let n = 2500;
        assert!(n > MAX_BATCH_BYTES / (8 * d));
        let pts: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                (0..d)
                    .map(|j| ((i * 31 + j * 7) % 13) as f64 - 6.0)
                    .collect()
            })
            .collect();
        let chunked = c
            .query_generated(n, |i, row| row.copy_from_slice(&pts[i]))
            .unwrap();
        assert_eq!(c.queries(), n as u64);
        let whole = o
            .query_batch(Mat::<f64>::from_fn(n, d, |i, j| pts[i][j]).as_ref())
            .unwrap();
        assert_eq!(chunked.len(), n);
        for (i, y) in chunked.iter().enumerate() {
            assert_eq!(y, &vec![whole[(i, 0)], whole[(i, 1)]]);
        }
    }

    #[test]
    fn counts_and_enforces_budget() {
        let net = Network::random(&"3-4-2".parse::<Arch>().unwrap(), InitRecipe::He, 1);
        let o = NetworkOracle::new(net);
        let c = CountingOracle::new(&o, Some(5));
        c.query_points(&vec![vec![0.0; 3]; 4]).unwrap();
        assert_eq!(c.queries(), 4);
        let e = c.query_points(&vec![vec![0.0; 3]; 2]).unwrap_err();
        assert!(matches!(
            e,
            OracleError::BudgetExhausted { budget: 5, used: 4 }
        ));
        assert_eq!(c.queries(), 4);
        assert!(matches!(
            c.query_points(&[vec![f64::NAN; 3]]),
            Err(OracleError::NonFinite)
        ));
        assert!(matches!(
            c.query_points(&[vec![0.0; 2]]),
            Err(OracleError::BadShape { .. })
        ));
    }

    /// Answers after a fixed delay: the time a remote target would keep the attack waiting.
    struct SlowOracle(NetworkOracle, std::time::Duration);

    impl Oracle for SlowOracle {
        fn input_dim(&self) -> usize {
            self.0.input_dim()
        }
        fn output_dim(&self) -> usize {
            self.0.output_dim()
        }
        fn query_batch(&self, xs: MatRef<'_, f64>) -> Result<Mat<f64>, OracleError> {
            std::thread::sleep(self.1);
            self.0.query_batch(xs)
        }
    }

    #[test]
    fn target_time_counts_answered_batches_only() {
        let net = Network::random(&"3-4-2".parse::<Arch>().unwrap(), InitRecipe::He, 1);
        let delay = std::time::Duration::from_millis(20);
        let o = SlowOracle(NetworkOracle::new(net), delay);
        let c = CountingOracle::new(&o, Some(4));
        assert_eq!(c.target_seconds(), 0.0);
        c.query_points(&vec![vec![0.5; 3]; 2]).unwrap();
        c.query_points(&vec![vec![0.5; 3]; 2]).unwrap();
        let waited = c.target_seconds();
        assert!(waited >= 2.0 * delay.as_secs_f64(), "{waited}");
        // Refused before the target is asked: over budget, wrong shape, NaN.
        assert!(c.query_points(&[vec![0.5; 3]]).is_err());
        let c2 = CountingOracle::new(&o, None);
        assert!(c2.query_points(&[vec![0.5; 2]]).is_err());
        assert!(c2.query_points(&[vec![f64::NAN; 3]]).is_err());
        assert_eq!(c.target_seconds(), waited);
        assert_eq!(c2.target_seconds(), 0.0);
    }

    #[test]
    fn log_is_bounded() {
        let net = Network::random(&"2-2-1".parse::<Arch>().unwrap(), InitRecipe::He, 1);
        let o = NetworkOracle::new(net);
        let c = CountingOracle::new(&o, None);
        for _ in 0..3 {
            c.query_points(&vec![vec![1.0, 2.0]; 2000]).unwrap();
        }
        assert_eq!(c.recent_log().len(), DEFAULT_LOG_CAPACITY);
        // Wide inputs: bounded by bytes, fewer rows.
        let net = Network::random(&"3072-2-1".parse::<Arch>().unwrap(), InitRecipe::He, 1);
        let o = NetworkOracle::new(net);
        let c = CountingOracle::new(&o, None);
        c.query_points(&vec![vec![0.5; 3072]; 1000]).unwrap();
        let kept = c.recent_log();
        assert_eq!(kept.len(), MAX_LOG_BYTES / (8 * 3073));
        assert!(kept.iter().all(|(x, y)| x.len() == 3072 && y.len() == 1));
    }
}
