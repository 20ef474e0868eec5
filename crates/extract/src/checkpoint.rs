//! Checkpoint and resume of a long extraction (`--resume DIR`).
//!
//! Two files live in the resume directory:
//!
//! - `state.json` — written atomically (temporary file, fsync, rename) after every *stage* (each hidden
//!   layer, then the output layer): the architecture and parameters it belongs to, the signed hidden
//!   layers recovered so far (f64 written by `serde_json`, which round-trips exactly), their per-layer
//!   reports, the queries spent and the wall time. A stage that is listed there is never redone.
//! - `journal.bin` — an append-only log of the oracle's *answers* during the current stage, one record
//!   per batch: row count, a 64-bit hash of the query inputs, the outputs, and a checksum of the record.
//!
//! Why a journal of answers rather than a snapshot of every data structure of the witness loop: the
//! attack is a deterministic function of (seed, stage, answers) — each stage draws from its own RNG
//! seeded by `(seed, stage)` and queries are issued from one thread in a fixed order. So a resumed stage
//! is re-run from its start, and every batch it asks for is answered from the journal as long as the
//! inputs hash the same; no query already paid for is asked again, and the result is bit-identical to an
//! uninterrupted run. Only the batch in flight at the moment of the crash is lost. Inputs are not
//! stored (784-dim queries would take ~80× the space of 10 outputs); their hash detects divergence
//! (another version of the code, other parameters), after which the rest of the journal is dropped and
//! the run continues live — still correct, only without the saving.
//!
//! Nothing half-written is ever read back as valid: `state.json` appears only complete (rename), and a
//! journal record torn by a kill fails its length or checksum test and is cut off.
//!
//! The journal holds one stage only (it is emptied when a stage is committed), so its size is bounded
//! by the largest stage: 8 bytes per output per query (e.g. ~120 MB for 1.5 M queries of a
//! 10-output target).

use crate::error::{ExtractError, OracleError};
use crate::oracle::Oracle;
use crate::params::{ExtractParams, Precision};
use crate::pipeline::LayerReport;
use crate::precision::PrecisionProbe;
use faer::{Mat, MatRef};
use netxray_relu::{Arch, Layer};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Version of `state.json`.
pub const STATE_SCHEMA: u32 = 1;
/// Journal format: `02` since the inputs' hash became per row ([`hash_inputs`]); a `01` journal is
/// started afresh like one of another stage.
const JOURNAL_MAGIC: &[u8; 8] = b"NXJRNL02";
const HEADER_LEN: u64 = 8 + 8 + 8 + 8;
/// Largest batch a journal record may claim; anything above is a torn or foreign record.
const MAX_RECORD_ROWS: u64 = 1 << 32;

/// A hidden layer as stored in `state.json` (row-major weights).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredLayer {
    /// Rows.
    pub out_dim: usize,
    /// Columns.
    pub in_dim: usize,
    /// `out_dim × in_dim`, row-major.
    pub weight: Vec<f64>,
    /// `out_dim`.
    pub bias: Vec<f64>,
}

impl StoredLayer {
    fn from_layer(l: &Layer) -> Self {
        let (r, c) = (l.weight.nrows(), l.weight.ncols());
        Self {
            out_dim: r,
            in_dim: c,
            weight: (0..r)
                .flat_map(|i| (0..c).map(move |j| (i, j)))
                .map(|(i, j)| l.weight[(i, j)])
                .collect(),
            bias: l.bias.clone(),
        }
    }

    fn to_layer(&self) -> Result<Layer, String> {
        if self.weight.len() != self.out_dim * self.in_dim || self.bias.len() != self.out_dim {
            return Err(format!(
                "stored layer {}x{} has {} weights and {} biases",
                self.out_dim,
                self.in_dim,
                self.weight.len(),
                self.bias.len()
            ));
        }
        if self.weight.iter().chain(&self.bias).any(|v| !v.is_finite()) {
            return Err("stored layer holds a non-finite value".into());
        }
        Ok(Layer {
            weight: Mat::from_fn(self.out_dim, self.in_dim, |i, j| {
                self.weight[i * self.in_dim + j]
            }),
            bias: self.bias.clone(),
        })
    }
}

/// Everything committed so far: the content of `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExtractionState {
    /// [`STATE_SCHEMA`].
    pub schema: u32,
    /// Architecture attacked.
    pub arch: String,
    /// Parameters of the run that wrote the state (seed and tolerances must match to resume).
    pub params: ExtractParams,
    /// Signed hidden layers recovered, in order.
    pub layers: Vec<StoredLayer>,
    /// Their reports.
    pub reports: Vec<LayerReport>,
    /// (layer, neuron) pairs with low sign confidence so far.
    pub low_confidence_signs: Vec<(usize, usize)>,
    /// Oracle queries spent up to the last committed stage.
    pub queries: u64,
    /// Wall seconds spent up to the last committed stage, over all runs.
    pub wall_seconds: f64,
    /// Of `wall_seconds`, the seconds spent waiting for the target (0 in states written before this
    /// field existed).
    #[serde(default)]
    pub target_seconds: f64,
    /// How many runs have worked on this extraction (1 for the first).
    pub runs: u32,
    /// The `--precision auto` measurement, once made.
    #[serde(default)]
    pub precision_probe: Option<PrecisionProbe>,
}

impl ExtractionState {
    /// The recovered hidden layers.
    pub fn hidden_layers(&self) -> Result<Vec<Layer>, ExtractError> {
        self.layers
            .iter()
            .map(|l| l.to_layer())
            .collect::<Result<_, _>>()
            .map_err(|e| ExtractError::Checkpoint(format!("state.json: {e}")))
    }

    /// Stores `layer` (signed) with its report.
    pub fn push_layer(&mut self, layer: &Layer, report: LayerReport) {
        self.layers.push(StoredLayer::from_layer(layer));
        self.reports.push(report);
    }
}

/// The parameters that change the answers asked for; `max_queries` and `threads` may differ between
/// runs (raise a budget, use another machine).
fn same_attack(a: &ExtractParams, b: &ExtractParams) -> bool {
    let mut a = a.clone();
    // `auto` resumes whatever the stored run resolved it to.
    let mut b = if b.precision == Precision::Auto {
        b.with_precision(a.precision)
    } else {
        b.clone()
    };
    a.max_queries = None;
    b.max_queries = None;
    a.threads = None;
    b.threads = None;
    // Measured by the precision probe, not chosen.
    a.noise_floor = 0.0;
    b.noise_floor = 0.0;
    a == b
}

/// A resume directory: committed state plus the journal of the stage in progress.
#[derive(Debug)]
pub struct ResumeDir {
    dir: PathBuf,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> ExtractError {
    ExtractError::Checkpoint(format!("{what} {}: {e}", path.display()))
}

impl ResumeDir {
    /// Opens (creating it when missing) the resume directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, ExtractError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err("cannot create", dir, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    /// The journal file of the stage in progress.
    pub fn journal_path(&self) -> PathBuf {
        self.dir.join("journal.bin")
    }

    /// Reads the committed state, checking that it belongs to this attack; `None` when there is none.
    pub fn load(
        &self,
        arch: &Arch,
        p: &ExtractParams,
    ) -> Result<Option<ExtractionState>, ExtractError> {
        let path = self.state_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("cannot read", &path, e)),
        };
        let st: ExtractionState = serde_json::from_str(&text).map_err(|e| {
            ExtractError::Checkpoint(format!("{} is not a netxray state: {e}", path.display()))
        })?;
        if st.schema != STATE_SCHEMA {
            return Err(ExtractError::Checkpoint(format!(
                "{} has schema {}, this netxray writes {STATE_SCHEMA}",
                path.display(),
                st.schema
            )));
        }
        if st.arch != arch.to_string() {
            return Err(ExtractError::Checkpoint(format!(
                "{} belongs to an extraction of {}, not {arch}; use another --resume directory",
                self.dir.display(),
                st.arch
            )));
        }
        if !same_attack(&st.params, p) {
            return Err(ExtractError::Checkpoint(format!(
                "{} was written with other attack parameters (seed {} vs {}, or a tolerance); rerun with the same options or another --resume directory",
                self.dir.display(),
                st.params.seed,
                p.seed
            )));
        }
        if st.layers.len() != st.reports.len() || st.layers.len() > arch.hidden().len() {
            return Err(ExtractError::Checkpoint(format!(
                "{} is inconsistent ({} layers, {} reports)",
                path.display(),
                st.layers.len(),
                st.reports.len()
            )));
        }
        Ok(Some(st))
    }

    /// Commits `state` atomically, then empties the journal for the next stage. A crash between the two
    /// leaves a journal whose stage number is stale; it is discarded on the next start.
    pub fn commit(&self, state: &ExtractionState) -> Result<(), ExtractError> {
        let path = self.state_path();
        let tmp = self.dir.join(".state.json.tmp");
        let json = serde_json::to_vec(state)
            .map_err(|e| ExtractError::Checkpoint(format!("cannot serialise state: {e}")))?;
        (|| -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            // Make the rename itself durable.
            if let Ok(d) = File::open(&self.dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })()
        .map_err(|e| io_err("cannot write", &path, e))
    }

    /// Removes the journal (after the final result is written).
    pub fn finish(&self) -> Result<(), ExtractError> {
        match std::fs::remove_file(self.journal_path()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("cannot remove", &self.journal_path(), e)),
        }
    }
}

/// Rows whose hash chains advance together in [`hash_inputs`].
const HASH_LANES: usize = 8;

/// One step of the inputs' hash chain (FNV-style multiply, then a shift to spread the high bits).
fn mix(h: u64, v: u64) -> u64 {
    let h = (h ^ v).wrapping_mul(0x0000_0100_0000_01b3);
    h ^ (h >> 29)
}

/// The hashes of rows `start..start + n` (`n ≤ HASH_LANES`), each a chain over its values in column
/// order. The chains advance side by side: one chain is bound by the multiply's latency (~6 cycles a
/// value, 3,072 values a row), eight in flight are not.
fn hash_rows(xs: MatRef<'_, f64>, start: usize, n: usize) -> [u64; HASH_LANES] {
    use std::borrow::Cow;
    let rows: Vec<Cow<'_, [f64]>> = (start..start + n)
        .map(|i| match xs.row(i).try_as_row_major() {
            Some(r) => Cow::Borrowed(r.as_slice()),
            None => Cow::Owned(xs.row(i).iter().copied().collect()),
        })
        .collect();
    let mut h = [0xcbf2_9ce4_8422_2325u64 ^ xs.ncols() as u64; HASH_LANES];
    for j in 0..xs.ncols() {
        for (hr, r) in h.iter_mut().zip(&rows) {
            *hr = mix(*hr, r[j].to_bits());
        }
    }
    h
}

/// A 64-bit hash of a batch of inputs: every row hashed on its own (on all cores), the row hashes
/// chained in row order. The same for any memory layout of the same values. (Journal format 02: format
/// 01 chained every value of the batch in one sequence, which on 3072-input batches was a single
/// latency-bound thread taking ~12 % of the extraction's CPU samples, more of its wall time.)
fn hash_inputs(xs: MatRef<'_, f64>) -> u64 {
    use rayon::prelude::*;
    let block = |b: usize| {
        let start = b * HASH_LANES;
        let n = HASH_LANES.min(xs.nrows() - start);
        hash_rows(xs, start, n).into_iter().take(n)
    };
    let blocks = xs.nrows().div_ceil(HASH_LANES);
    let row_hashes: Vec<u64> = if xs.nrows() * xs.ncols() >= crate::oracle::PARALLEL_CHECK_VALUES {
        (0..blocks).into_par_iter().flat_map_iter(block).collect()
    } else {
        (0..blocks).flat_map(block).collect()
    };
    row_hashes.into_iter().fold(
        0xcbf2_9ce4_8422_2325 ^ (xs.nrows() as u64) ^ ((xs.ncols() as u64) << 32),
        mix,
    )
}

fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for chunk in bytes.chunks(8) {
        let mut w = [0u8; 8];
        w[..chunk.len()].copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x0000_0100_0000_01b3);
        h ^= h >> 31;
    }
    h
}

struct JournalState {
    /// Open for replay until the records run out, stop matching, or one is torn.
    reader: Option<BufReader<File>>,
    /// Byte offset just past the last record known good.
    valid_end: u64,
    writer: Option<BufWriter<File>>,
    replayed_rows: u64,
    replayed_batches: u64,
    diverged: bool,
}

/// An [`Oracle`] that answers from the journal of an interrupted run while the requests match it, and
/// otherwise asks `inner` and appends the answer to the journal.
pub struct JournalOracle<'a, O: Oracle + ?Sized> {
    inner: &'a O,
    path: PathBuf,
    state: Mutex<JournalState>,
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

impl<'a, O: Oracle + ?Sized> JournalOracle<'a, O> {
    /// Opens the journal at `path` for stage `stage`: a journal of that stage is replayed, anything else
    /// (missing, another stage, another target shape, a foreign file) is started afresh.
    pub fn open(inner: &'a O, path: &Path, stage: u64) -> Result<Self, ExtractError> {
        let (di, dout) = (inner.input_dim() as u64, inner.output_dim() as u64);
        let mut reader = None;
        if let Ok(f) = File::open(path) {
            let mut r = BufReader::with_capacity(1 << 20, f);
            let mut magic = [0u8; 8];
            let ok = r.read_exact(&mut magic).is_ok()
                && &magic == JOURNAL_MAGIC
                && read_u64(&mut r).ok() == Some(stage)
                && read_u64(&mut r).ok() == Some(di)
                && read_u64(&mut r).ok() == Some(dout);
            if ok {
                reader = Some(r);
            } else {
                tracing::info!(path = %path.display(), "journal belongs to another stage or format; starting it afresh");
            }
        }
        let j = Self {
            inner,
            path: path.to_path_buf(),
            state: Mutex::new(JournalState {
                reader,
                valid_end: HEADER_LEN,
                writer: None,
                replayed_rows: 0,
                replayed_batches: 0,
                diverged: false,
            }),
        };
        {
            let mut st = j.state.lock().expect("journal lock");
            if st.reader.is_none() {
                j.start_fresh(&mut st, stage)?;
            }
        }
        Ok(j)
    }

    fn start_fresh(&self, st: &mut JournalState, stage: u64) -> Result<(), ExtractError> {
        let p = &self.path;
        (|| -> std::io::Result<()> {
            let mut f = File::create(p)?;
            f.write_all(JOURNAL_MAGIC)?;
            for v in [
                stage,
                self.inner.input_dim() as u64,
                self.inner.output_dim() as u64,
            ] {
                f.write_all(&v.to_le_bytes())?;
            }
            f.flush()?;
            st.writer = Some(BufWriter::with_capacity(1 << 20, f));
            Ok(())
        })()
        .map_err(|e| io_err("cannot create", p, e))?;
        st.valid_end = HEADER_LEN;
        Ok(())
    }

    /// Starts the journal of stage `stage` (after the previous one was committed): whatever is left of
    /// the old journal is dropped.
    pub fn begin_stage(&self, stage: u64) -> Result<(), ExtractError> {
        let mut st = self.state.lock().expect("journal lock");
        st.reader = None;
        st.writer = None;
        self.start_fresh(&mut st, stage)
    }

    /// Queries (rows) and batches answered from the journal instead of the target.
    pub fn replayed(&self) -> (u64, u64) {
        let st = self.state.lock().expect("journal lock");
        (st.replayed_rows, st.replayed_batches)
    }

    /// Whether the requests stopped matching the journal (its rest was dropped).
    pub fn diverged(&self) -> bool {
        self.state.lock().expect("journal lock").diverged
    }

    /// Reads the next record; `None` when there is none or it is torn.
    fn next_record(r: &mut BufReader<File>, dout: usize) -> Option<(u64, u64, Vec<f64>, u64)> {
        let rows = read_u64(r).ok()?;
        if rows == 0 || rows > MAX_RECORD_ROWS {
            return None;
        }
        let hash = read_u64(r).ok()?;
        let n = (rows as usize).checked_mul(dout)?;
        let mut bytes = vec![0u8; 16 + n * 8];
        bytes[..8].copy_from_slice(&rows.to_le_bytes());
        bytes[8..16].copy_from_slice(&hash.to_le_bytes());
        r.read_exact(&mut bytes[16..]).ok()?;
        let sum = read_u64(r).ok()?;
        if sum != checksum(&bytes) {
            return None;
        }
        let ys = bytes[16..]
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Some((rows, hash, ys, (bytes.len() + 8) as u64))
    }

    /// Stops replaying: cuts the file after the last good record and opens it for appending.
    fn go_live(&self, st: &mut JournalState) -> Result<(), OracleError> {
        st.reader = None;
        let f = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .and_then(|mut f| {
                f.set_len(st.valid_end)?;
                f.seek(SeekFrom::End(0))?;
                Ok(f)
            })
            .map_err(|e| {
                OracleError::Unavailable(format!("journal {}: {e}", self.path.display()))
            })?;
        st.writer = Some(BufWriter::with_capacity(1 << 20, f));
        Ok(())
    }
}

impl<O: Oracle + ?Sized> Oracle for JournalOracle<'_, O> {
    fn input_dim(&self) -> usize {
        self.inner.input_dim()
    }
    fn output_dim(&self) -> usize {
        self.inner.output_dim()
    }
    fn query_batch(&self, xs: MatRef<'_, f64>) -> Result<Mat<f64>, OracleError> {
        let dout = self.output_dim();
        let hash = hash_inputs(xs);
        let mut st = self.state.lock().expect("journal lock");
        if let Some(r) = st.reader.as_mut() {
            match Self::next_record(r, dout) {
                Some((rows, h, ys, len)) if rows == xs.nrows() as u64 && h == hash => {
                    st.valid_end += len;
                    st.replayed_rows += rows;
                    st.replayed_batches += 1;
                    return Ok(Mat::from_fn(xs.nrows(), dout, |i, j| ys[i * dout + j]));
                }
                Some(_) => {
                    tracing::warn!(
                        "the run no longer matches the journal of the interrupted one; continuing live"
                    );
                    st.diverged = true;
                    self.go_live(&mut st)?;
                }
                None => self.go_live(&mut st)?,
            }
        }
        let ys = self.inner.query_batch(xs)?;
        if ys.nrows() != xs.nrows() || ys.ncols() != dout {
            // Let the counting layer report the malformed answer; do not journal it.
            return Ok(ys);
        }
        let mut bytes = Vec::with_capacity(16 + xs.nrows() * dout * 8 + 8);
        bytes.extend_from_slice(&(xs.nrows() as u64).to_le_bytes());
        bytes.extend_from_slice(&hash.to_le_bytes());
        for i in 0..ys.nrows() {
            for j in 0..dout {
                bytes.extend_from_slice(&ys[(i, j)].to_le_bytes());
            }
        }
        let sum = checksum(&bytes);
        bytes.extend_from_slice(&sum.to_le_bytes());
        let w = st.writer.as_mut().expect("journal open for writing");
        // Flushed per batch: a kill -9 loses at most the batch in flight (the page cache survives the
        // process); a torn record is cut off by its checksum on the next start.
        w.write_all(&bytes).and_then(|_| w.flush()).map_err(|e| {
            OracleError::Unavailable(format!("journal {}: {e}", self.path.display()))
        })?;
        st.valid_end += bytes.len() as u64;
        Ok(ys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::NetworkOracle;
    use netxray_relu::{InitRecipe, Network};
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Counted<'a> {
        inner: &'a NetworkOracle,
        rows: AtomicU64,
    }
    impl Oracle for Counted<'_> {
        fn input_dim(&self) -> usize {
            self.inner.input_dim()
        }
        fn output_dim(&self) -> usize {
            self.inner.output_dim()
        }
        fn query_batch(&self, xs: MatRef<'_, f64>) -> Result<Mat<f64>, OracleError> {
            self.rows.fetch_add(xs.nrows() as u64, Ordering::SeqCst);
            self.inner.query_batch(xs)
        }
    }

    fn batch(seed: u64, n: usize) -> Mat<f64> {
        Mat::from_fn(n, 3, |i, j| (seed as f64) + (i * 3 + j) as f64 * 0.1)
    }

    #[test]
    fn replays_matching_batches_and_cuts_torn_records() {
        let net = Network::random(&"3-4-2".parse::<Arch>().unwrap(), InitRecipe::He, 1);
        let target = NetworkOracle::new(net);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.bin");
        let o = Counted {
            inner: &target,
            rows: AtomicU64::new(0),
        };
        let answers: Vec<Mat<f64>> = {
            let j = JournalOracle::open(&o, &path, 1).unwrap();
            (0..3)
                .map(|k| j.query_batch(batch(k, 5).as_ref()).unwrap())
                .collect()
        };
        assert_eq!(o.rows.load(Ordering::SeqCst), 15);
        // Tear the last record as a kill in the middle of a write would.
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let j = JournalOracle::open(&o, &path, 1).unwrap();
        for (k, a) in answers.iter().enumerate() {
            assert_eq!(&j.query_batch(batch(k as u64, 5).as_ref()).unwrap(), a);
        }
        // Two batches replayed, the torn third asked again.
        assert_eq!(j.replayed(), (10, 2));
        assert_eq!(o.rows.load(Ordering::SeqCst), 20);
        drop(j);
        // Another stage's journal is not replayed; a different request diverges.
        let j = JournalOracle::open(&o, &path, 2).unwrap();
        j.query_batch(batch(0, 5).as_ref()).unwrap();
        assert_eq!(j.replayed(), (0, 0));
        drop(j);
        let j = JournalOracle::open(&o, &path, 2).unwrap();
        j.query_batch(batch(9, 5).as_ref()).unwrap();
        assert!(j.diverged());
        assert_eq!(o.rows.load(Ordering::SeqCst), 30);
    }

    #[test]
    fn input_hash_sees_every_value_and_row_order_but_not_the_layout() {
        // Large enough for the parallel path, with a ragged last block of lanes.
        let (n, d) = (1 + (crate::oracle::PARALLEL_CHECK_VALUES / 64), 64);
        let xs = Mat::from_fn(n, d, |i, j| ((i * 131 + j * 7) % 97) as f64 * 0.37 - 5.0);
        let h = hash_inputs(xs.as_ref());
        // Row-major storage of the same values (the layout `CountingOracle` sends).
        let flat: Vec<f64> = (0..n)
            .flat_map(|i| (0..d).map(move |j| (i, j)))
            .map(|(i, j)| xs[(i, j)])
            .collect();
        assert_eq!(hash_inputs(MatRef::from_row_major_slice(&flat, n, d)), h);
        // The sequential path (small batches) computes the same function.
        let head = xs.as_ref().subrows(0, 9);
        let head_flat = &flat[..9 * d];
        assert_eq!(
            hash_inputs(head),
            hash_inputs(MatRef::from_row_major_slice(head_flat, 9, d))
        );
        let mut one = xs.clone();
        one[(n - 1, d - 1)] += 1e-12;
        assert_ne!(hash_inputs(one.as_ref()), h);
        let mut swapped = xs.clone();
        for j in 0..d {
            let (a, b) = (swapped[(0, j)], swapped[(1, j)]);
            swapped[(0, j)] = b;
            swapped[(1, j)] = a;
        }
        assert_ne!(hash_inputs(swapped.as_ref()), h);
    }

    #[test]
    fn state_refuses_other_attacks() {
        let dir = tempfile::tempdir().unwrap();
        let rd = ResumeDir::open(dir.path()).unwrap();
        let arch: Arch = "3-4-2".parse().unwrap();
        let p = ExtractParams::builder().seed(3).build().unwrap();
        assert!(rd.load(&arch, &p).unwrap().is_none());
        let st = ExtractionState {
            schema: STATE_SCHEMA,
            arch: arch.to_string(),
            params: p.clone(),
            layers: vec![],
            reports: vec![],
            low_confidence_signs: vec![],
            queries: 7,
            wall_seconds: 1.0,
            target_seconds: 0.5,
            runs: 1,
            precision_probe: None,
        };
        rd.commit(&st).unwrap();
        assert_eq!(rd.load(&arch, &p).unwrap().unwrap().queries, 7);
        // A larger budget is fine; another seed or architecture is not.
        let more = ExtractParams::builder()
            .seed(3)
            .max_queries(Some(10))
            .build()
            .unwrap();
        assert!(rd.load(&arch, &more).is_ok());
        let other = ExtractParams::builder().seed(4).build().unwrap();
        assert!(matches!(
            rd.load(&arch, &other),
            Err(ExtractError::Checkpoint(_))
        ));
        assert!(matches!(
            rd.load(&"3-5-2".parse().unwrap(), &p),
            Err(ExtractError::Checkpoint(_))
        ));
        std::fs::write(dir.path().join("state.json"), "{\"schema\": 1, \"arch\"").unwrap();
        assert!(matches!(
            rd.load(&arch, &p),
            Err(ExtractError::Checkpoint(_))
        ));
    }
}
