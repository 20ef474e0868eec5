//! Errors of the attack.

use thiserror::Error;

/// Everything that stops an extraction. Each variant says which stage and why, so a user can act on it.
#[derive(Debug, Error)]
pub enum ExtractError {
    /// The oracle refused or failed a query.
    #[error("oracle error: {0}")]
    Oracle(#[from] OracleError),
    /// The target's answers are noisier than any preset tolerates (rounded or randomised outputs).
    #[error(
        "the target's answers carry relative noise {noise_rel:.1e} (second differences on tiny linear stencils), more than the f32 preset tolerates ({max:.0e}); its outputs are probably rounded or noised, so the attack stopped before spending more queries"
    )]
    TooNoisy {
        /// Median relative noise measured.
        noise_rel: f64,
        /// Largest noise the f32 preset handles.
        max: f64,
    },
    /// A parameter of the attack is invalid.
    #[error("invalid parameter '{name}': {reason}")]
    InvalidParam {
        /// Parameter name as in [`crate::params::ExtractParamsBuilder`].
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The attack could not recover a layer within its witness budget or tolerances.
    #[error("layer {layer}: {reason}")]
    LayerFailed {
        /// 1-based hidden layer index.
        layer: usize,
        /// What went wrong.
        reason: String,
    },
    /// The query budget ran out while recovering `layer`; the hidden layers finished before it are
    /// attached (signed, canonical gauge) so that the work is not lost.
    #[error(
        "{} query budget of {budget} exhausted after {used} queries while recovering hidden layer {layer} ({} earlier layers recovered)",
        if *by_target { "server" } else { "our" },
        recovered.len()
    )]
    BudgetExhausted {
        /// The target's own budget (`OracleError::TargetBudgetSpent`), not our `--max-queries`.
        by_target: bool,
        /// 1-based hidden layer being recovered.
        layer: usize,
        /// The budget.
        budget: u64,
        /// Queries answered.
        used: u64,
        /// Hidden layers recovered before the budget ran out.
        recovered: Vec<netxray_relu::Layer>,
    },
    /// The architecture given does not fit the oracle.
    #[error("architecture mismatch: {0}")]
    Arch(String),
    /// The recovered network disagrees with the target on fresh queries: something upstream (a missed
    /// neuron, a wrong sign) went wrong. The extraction is attached so that it can still be inspected.
    #[error(
        "verification failed: recovered network differs from the target by {rel_error:.3e} (relative) on fresh queries; see the report for low-confidence signs and missing neurons"
    )]
    VerificationFailed {
        /// max |f − f̂| / max |f| on the verification queries.
        rel_error: f64,
        /// What was recovered.
        extraction: Box<crate::pipeline::Extraction>,
    },
    /// Some neurons' rows could not be pinned down on every input (an input unit was never active at
    /// their witnesses); the weights there are unknown, so the model is wrong wherever that unit fires.
    /// The extraction is attached for inspection.
    #[error(
        "incomplete: hidden layer {layer} neuron(s) {neurons:?} have inputs never seen active at their witnesses; their weights there are unknown"
    )]
    Incomplete {
        /// 1-based hidden layer.
        layer: usize,
        /// Neurons (output order) with unconstrained inputs.
        neurons: Vec<usize>,
        /// What was recovered.
        extraction: Box<crate::pipeline::Extraction>,
    },
    /// Model I/O or validation problem.
    #[error(transparent)]
    Relu(#[from] netxray_relu::ReluError),
    /// The resume directory cannot be read or written, or belongs to another extraction.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
}

/// Errors an [`crate::oracle::Oracle`] reports.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum OracleError {
    /// The query budget is spent; `used` queries were answered before.
    #[error("query budget of {budget} exhausted ({used} queries answered)")]
    BudgetExhausted {
        /// The budget.
        budget: u64,
        /// Queries answered so far.
        used: u64,
    },
    /// A query row has the wrong width.
    #[error("query has {got} columns, the oracle takes {expected}")]
    BadShape {
        /// Columns given.
        got: usize,
        /// Columns expected.
        expected: usize,
    },
    /// A query contained NaN or inf.
    #[error("query contains a non-finite value")]
    NonFinite,
    /// The oracle answered with NaN/inf or the wrong shape.
    #[error("oracle returned an invalid answer: {0}")]
    BadAnswer(String),
    /// The oracle could not be reached or failed (network, process, ...).
    #[error("oracle unavailable: {0}")]
    Unavailable(String),
    /// A remote target refused a request with an HTTP status that retrying cannot fix (401, 4xx).
    #[error("target answered HTTP {status}: {message}")]
    Http {
        /// HTTP status code.
        status: u16,
        /// The server's explanation (its JSON `error` field, or the raw body).
        message: String,
    },
    /// A remote target's own query budget is spent (its answers stop; distinct from our `--max-queries`).
    #[error(
        "server query budget spent: the target answers at most {budget} queries and has answered {used}"
    )]
    TargetBudgetSpent {
        /// The server's budget.
        budget: u64,
        /// Queries the server had answered.
        used: u64,
    },
    /// The target rounds its outputs (a defence): differences below the rounding step are invisible.
    #[error(
        "the target rounds its outputs to {digits} decimal digits; exact extraction is impossible (the attack measures output differences far below 1e-{digits}), so it stopped before spending more queries"
    )]
    RoundedOutputs {
        /// Decimal digits kept by the target.
        digits: u32,
    },
}
