//! The JSON wire format shared by server and client: `{"inputs": [[…], …]}` in, `{"outputs": [[…], …]}`
//! out, `{"error": …, "code": …}` for refusals, and the `/v1/info` document.
//!
//! Matrices are decoded by a streaming visitor straight into one row-major `Vec<f64>`: rows are
//! counted and their widths checked while parsing, so an oversized or ragged body is refused without
//! first building a tree of JSON values (and deep nesting never recurses: a number is expected where a
//! nested list starts). `f64` travels as the shortest decimal that round-trips (serde_json writes with
//! ryu and, with its `float_roundtrip` feature, parses correctly rounded), so the wire adds no error.

use faer::{Mat, MatRef};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};
use std::cell::Cell;
use std::fmt;

/// What `GET /v1/info` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Input width of the model.
    pub input_dim: usize,
    /// Output width of the model.
    pub output_dim: usize,
    /// Queries (rows) answered so far.
    pub queries_used: u64,
    /// The server's query budget (None: unlimited).
    pub max_queries: Option<u64>,
    /// Most rows one request may carry.
    pub max_batch_rows: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Architecture string (only when the server runs with `expose_arch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

/// Machine-readable reason of a refusal, the `code` field of an error body.
pub mod code {
    /// The body is not JSON (syntax error, truncated, trailing bytes).
    pub const MALFORMED_JSON: &str = "malformed_json";
    /// JSON of the wrong shape: wrong types, wrong row width, empty batch, unknown fields.
    pub const INVALID_INPUT: &str = "invalid_input";
    /// The body or the batch is larger than the server accepts.
    pub const TOO_LARGE: &str = "too_large";
    /// Missing or wrong bearer token.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// Too many requests in flight; retry after `Retry-After` seconds.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// The server's query budget cannot cover the request; retrying will not help.
    pub const BUDGET_EXHAUSTED: &str = "budget_exhausted";
    /// The `Content-Type` is not `application/json`.
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    /// No such endpoint.
    pub const NOT_FOUND: &str = "not_found";
    /// The endpoint exists but not for this method.
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// The body did not arrive in time.
    pub const TIMEOUT: &str = "timeout";
    /// The model produced a non-finite output (inputs too large for `f64`).
    pub const NON_FINITE_OUTPUT: &str = "non_finite_output";
    /// A bug on the server (the request was not counted).
    pub const INTERNAL: &str = "internal";
}

/// The body of every non-200 answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Human-readable cause.
    pub error: String,
    /// Machine-readable cause (see [`code`]).
    pub code: String,
    /// The server's budget (only with [`code::BUDGET_EXHAUSTED`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<u64>,
    /// Queries answered (only with [`code::BUDGET_EXHAUSTED`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<u64>,
}

/// Why a matrix body was refused.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum DecodeError {
    /// Not JSON at all (HTTP 400).
    Malformed(String),
    /// JSON of the wrong shape or values (HTTP 422).
    Invalid(String),
    /// More rows than allowed (HTTP 413).
    TooManyRows(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Malformed(m) => write!(f, "malformed JSON: {m}"),
            DecodeError::Invalid(m) => write!(f, "invalid request: {m}"),
            DecodeError::TooManyRows(max) => {
                write!(f, "batch has more than {max} rows (the per-request limit)")
            }
        }
    }
}

/// Decodes `{"<field>": [[f64; cols], …]}` (exactly that one field) into a `rows × cols` matrix.
/// At most `max_rows` rows; zero rows is an error.
pub(crate) fn decode_matrix(
    bytes: &[u8],
    field: &'static str,
    cols: usize,
    max_rows: usize,
) -> Result<Mat<f64>, DecodeError> {
    let too_many = Cell::new(false);
    let mut data = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let seed = TopSeed {
        field,
        cols,
        max_rows,
        data: &mut data,
        too_many: &too_many,
    };
    let classify = |e: serde_json::Error| -> DecodeError {
        if too_many.get() {
            return DecodeError::TooManyRows(max_rows);
        }
        match e.classify() {
            serde_json::error::Category::Data => DecodeError::Invalid(e.to_string()),
            _ => DecodeError::Malformed(e.to_string()),
        }
    };
    let rows = seed.deserialize(&mut de).map_err(classify)?;
    de.end().map_err(classify)?;
    if rows == 0 {
        return Err(DecodeError::Invalid(format!(
            "empty batch: `{field}` holds no rows"
        )));
    }
    Ok(Mat::from_fn(rows, cols, |i, j| data[i * cols + j]))
}

struct TopSeed<'a> {
    field: &'static str,
    cols: usize,
    max_rows: usize,
    data: &'a mut Vec<f64>,
    too_many: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_> {
    type Value = usize;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an object {{\"{}\": [[numbers], ...]}}", self.field)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let mut rows = None;
        // Keys are owned: an escaped key cannot be borrowed from the input.
        while let Some(key) = map.next_key::<String>()? {
            if key != self.field {
                return Err(de::Error::custom(format!(
                    "unknown field `{key}`, expected only `{}`",
                    self.field
                )));
            }
            if rows.is_some() {
                return Err(de::Error::custom(format!("duplicate field `{key}`")));
            }
            rows = Some(map.next_value_seed(RowsSeed {
                cols: self.cols,
                max_rows: self.max_rows,
                data: &mut *self.data,
                too_many: self.too_many,
            })?);
        }
        rows.ok_or_else(|| de::Error::custom(format!("missing field `{}`", self.field)))
    }
}

struct RowsSeed<'a> {
    cols: usize,
    max_rows: usize,
    data: &'a mut Vec<f64>,
    too_many: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for RowsSeed<'_> {
    type Value = usize;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowsSeed<'_> {
    type Value = usize;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a list of rows of {} numbers", self.cols)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut rows = 0usize;
        loop {
            if rows == self.max_rows {
                // One row too many: skip it unparsed (IgnoredAny) just to learn that it exists.
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    self.too_many.set(true);
                    return Err(de::Error::custom(format!(
                        "more than {} rows",
                        self.max_rows
                    )));
                }
                return Ok(rows);
            }
            let row = RowSeed {
                row: rows,
                cols: self.cols,
                data: &mut *self.data,
            };
            if seq.next_element_seed(row)?.is_none() {
                return Ok(rows);
            }
            rows += 1;
        }
    }
}

struct RowSeed<'a> {
    row: usize,
    cols: usize,
    data: &'a mut Vec<f64>,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "row {}: a list of {} numbers", self.row, self.cols)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut n = 0usize;
        while let Some(v) = seq.next_element::<f64>()? {
            if n == self.cols {
                return Err(de::Error::custom(format!(
                    "row {} has more than {} values (the model takes {})",
                    self.row, self.cols, self.cols
                )));
            }
            // serde_json already refuses numbers that overflow to inf ("number out of range"); kept
            // so that the matrix is finite whatever parser is behind the Deserializer.
            if !v.is_finite() {
                return Err(de::Error::custom(format!(
                    "row {} value {n} is not a finite number",
                    self.row
                )));
            }
            self.data.push(v);
            n += 1;
        }
        if n != self.cols {
            return Err(de::Error::custom(format!(
                "row {} has {n} values, the model takes {}",
                self.row, self.cols
            )));
        }
        Ok(())
    }
}

/// Rows of a matrix as JSON lists (values must be finite: JSON has no NaN/inf and serde_json would
/// write `null`).
struct Rows<'a>(MatRef<'a, f64>);

struct Row<'a>(MatRef<'a, f64>, usize);

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.nrows()))?;
        for i in 0..self.0.nrows() {
            seq.serialize_element(&Row(self.0, i))?;
        }
        seq.end()
    }
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.ncols()))?;
        for j in 0..self.0.ncols() {
            seq.serialize_element(&self.0[(self.1, j)])?;
        }
        seq.end()
    }
}

struct Wrapped<'a> {
    field: &'static str,
    rows: Rows<'a>,
}

impl Serialize for Wrapped<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Body", 1)?;
        st.serialize_field(self.field, &self.rows)?;
        st.end()
    }
}

/// Encodes `{"<field>": [[…], …]}`. Every value of `m` must be finite.
pub(crate) fn encode_matrix(field: &'static str, m: MatRef<'_, f64>) -> Vec<u8> {
    debug_assert!((0..m.ncols()).all(|j| m.col(j).iter().all(|v| v.is_finite())));
    // Serializing numbers and lists into a Vec cannot fail.
    serde_json::to_vec(&Wrapped {
        field,
        rows: Rows(m),
    })
    .expect("serializing finite numbers into memory cannot fail")
}

/// Rounds `v` to `digits` decimal digits (the nearest `f64` to a multiple of 10^-digits). Values too
/// large to carry that many fractional digits in `f64` are returned unchanged.
pub fn round_to_digits(v: f64, digits: u32) -> f64 {
    let s = 10f64.powi(digits as i32);
    let x = v * s;
    if !x.is_finite() || x.abs() >= 4_503_599_627_370_496.0 {
        return v;
    }
    // k / 10^d with exact k and exact 10^d (d ≤ 22) is one correctly rounded division.
    x.round() / s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Result<Mat<f64>, DecodeError> {
        decode_matrix(s.as_bytes(), "inputs", 2, 3)
    }

    #[test]
    fn decodes_and_round_trips_exactly() {
        let vals = [
            0.1,
            -0.0,
            1.0 / 3.0,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            -1.2345678901234567e-300,
            std::f64::consts::PI,
        ];
        let m = Mat::from_fn(4, 2, |i, j| vals[i * 2 + j]);
        let bytes = encode_matrix("inputs", m.as_ref());
        let back = decode_matrix(&bytes, "inputs", 2, 10).unwrap();
        for i in 0..4 {
            for j in 0..2 {
                assert_eq!(back[(i, j)].to_bits(), m[(i, j)].to_bits());
            }
        }
    }

    #[test]
    fn refuses_bad_bodies_with_the_right_kind() {
        use DecodeError::*;
        let kind = |r: Result<Mat<f64>, DecodeError>| match r.unwrap_err() {
            Malformed(_) => "malformed",
            Invalid(_) => "invalid",
            TooManyRows(_) => "too_many",
        };
        assert_eq!(kind(dec("")), "malformed");
        assert_eq!(kind(dec("{\"inputs\": [[1,2]")), "malformed");
        assert_eq!(kind(dec("{\"inputs\": [[1,2]]} x")), "malformed");
        assert_eq!(kind(dec("{\"inputs\": [[1e999,2]]}")), "malformed");
        assert_eq!(kind(dec("{\"inputs\": [[NaN,2]]}")), "malformed");
        assert_eq!(kind(dec("{\"inputs\": []}")), "invalid");
        assert_eq!(kind(dec("{\"inputs\": [[1]]}")), "invalid");
        assert_eq!(kind(dec("{\"inputs\": [[1,2,3]]}")), "invalid");
        assert_eq!(kind(dec("{\"inputs\": [[1,\"2\"]]}")), "invalid");
        assert_eq!(kind(dec("{\"inputs\": [[[1],2]]}")), "invalid");
        assert_eq!(kind(dec("{\"inputs\": null}")), "invalid");
        assert_eq!(kind(dec("{\"x\": 1}")), "invalid");
        assert_eq!(kind(dec("{}")), "invalid");
        assert_eq!(kind(dec("[[1,2]]")), "invalid");
        assert_eq!(
            kind(dec("{\"inputs\": [[1,2]], \"inputs\": [[1,2]]}")),
            "invalid"
        );
        assert_eq!(
            kind(dec("{\"inputs\": [[1,2],[1,2],[1,2],[1,2]]}")),
            "too_many"
        );
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(kind(dec(&deep)), "invalid");
        let deep = format!("{{\"inputs\": {}", "[".repeat(100_000));
        assert!(dec(&deep).is_err());
        let long_int = format!("{{\"inputs\": [[1{},2]]}}", "0".repeat(400));
        assert!(dec(&long_int).is_err());
        assert_eq!(dec("{\"inputs\": [[1,2],[3,4]]}").unwrap().nrows(), 2);
        assert_eq!(dec("{\"inputs\":[[1,2],[3,4],[5,6]]}").unwrap().nrows(), 3);
    }

    #[test]
    fn rounding_keeps_the_requested_digits() {
        assert_eq!(round_to_digits(1.23456, 2), 1.23);
        assert_eq!(round_to_digits(-1.235001, 2), -1.24);
        assert_eq!(round_to_digits(1e300, 4), 1e300);
        assert_eq!(round_to_digits(0.5, 0), 1.0);
    }
}
