//! Critical points on lines: batched bisection with relative linearity tests, crossings located by
//! intersecting the two linear pieces, double crossings rejected.
//!
//! On a line `x(t) = o + t·d` the target is piecewise linear in `t`. An interval is linear when its
//! quarter points and midpoint lie on the chord (relative tolerance, scaled by |f| and by the change of f
//! across the interval — never absolute, which is what makes the reference code run away on wide inputs).
//! Otherwise the left piece (through `a`, `q1`) and the right piece (through `q3`, `b`) are intersected;
//! the crossing is accepted only if the midpoint fits the two-piece model and a query at the predicted
//! crossing lands on the predicted value. Anything else (two or more kinks) is split and searched again.

use crate::error::OracleError;
use crate::oracle::{CountingOracle, Oracle};

/// A search line `o + t·d`.
#[derive(Debug, Clone)]
pub struct Line {
    /// Origin.
    pub origin: Vec<f64>,
    /// Direction.
    pub dir: Vec<f64>,
}

impl Line {
    /// The point at parameter `t`.
    pub fn at(&self, t: f64) -> Vec<f64> {
        self.origin
            .iter()
            .zip(&self.dir)
            .map(|(o, d)| o + t * d)
            .collect()
    }

    /// Writes the point at parameter `t` into `out` (no allocation: batches of 10^5 points are
    /// generated row by row while being sent).
    pub fn write_at(&self, t: f64, out: &mut [f64]) {
        for ((x, o), d) in out.iter_mut().zip(&self.origin).zip(&self.dir) {
            *x = o + t * d;
        }
    }
}

/// A located kink of the target on a line.
#[derive(Debug, Clone)]
pub struct CriticalPoint {
    /// Index of the line in the slice given to [`find_critical_points`].
    pub line: usize,
    /// Parameter of the crossing.
    pub t: f64,
    /// Left end of an interval around `t` that holds no other kink.
    pub a: f64,
    /// Right end of that interval.
    pub b: f64,
    /// Slope change of every output across the kink, per unit of `t` (right minus left).
    pub jump: Vec<f64>,
}

/// Tolerances of the search (taken from [`crate::params::ExtractParams`]).
#[derive(Debug, Clone, Copy)]
pub struct SearchTol {
    /// Relative linearity tolerance.
    pub rel_tol: f64,
    /// Minimum interval length as a fraction of the segment searched.
    pub min_interval_rel: f64,
    /// Absolute floor of the linearity tolerance: the target's measured answer noise (0 for f64
    /// targets). Noise follows the magnitudes inside the network, not |f|, so near a zero of f a purely
    /// relative test would read noise as kinks.
    pub abs_floor: f64,
}

/// A single-kink candidate: interval, crossing, predicted value, jump, f(q1), f(q3).
type Candidate = (Interval, f64, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

struct Interval {
    line: usize,
    a: f64,
    m: f64,
    b: f64,
    fa: Vec<f64>,
    fm: Vec<f64>,
    fb: Vec<f64>,
    min_len: f64,
    /// Index of the segment it came from (for the per-segment cap).
    segment: usize,
    /// Largest |f| at the segment's ends and midpoint: a floor under the interval's own scale.
    segment_scale: f64,
}

/// Most *short* intervals (narrower than [`SHORT_INTERVAL_REL`] of their segment) one segment may have
/// in flight at one bisection level. Real kinks are isolated long before their intervals get that short
/// (two kinks closer than ~1e-6 of a line are rare), so many short live intervals mean the linearity test
/// is reading rounding noise as kinks, and doubling on would never stop before `min_len` (measured:
/// 857,518 intervals on 5 lines at level 28 in layer 8 of a 784-16×8-1 net). Such a segment is
/// abandoned (its kinks are met again on other lines).
const MAX_SHORT_LIVE_PER_SEGMENT: usize = 1024;

/// An interval narrower than this fraction of its segment (2^-20) counts towards
/// [`MAX_SHORT_LIVE_PER_SEGMENT`].
const SHORT_INTERVAL_REL: f64 = 1.0 / (1u64 << 20) as f64;

/// Most intervals of any width one segment may have in flight: bounds the work of one level when
/// noise beats the linearity test from the start. Not lower: a line through the first layer of a
/// 3072-256×8-10 net meets thousands of real kinks (the earlier cap of 1,024 live intervals abandoned
/// every such line after ~280 of them, most of the first layer's crossings never seen).
const MAX_LIVE_PER_SEGMENT: usize = 16384;

fn lerp(t: f64, t0: f64, f0: &[f64], t1: f64, f1: &[f64]) -> Vec<f64> {
    let w = (t - t0) / (t1 - t0);
    f0.iter().zip(f1).map(|(a, b)| a + w * (b - a)).collect()
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

fn scale_of(vals: &[&[f64]]) -> f64 {
    let mut s: f64 = 0.0;
    for v in vals {
        for x in v.iter() {
            s = s.max(x.abs());
        }
    }
    let spread = vals
        .iter()
        .skip(1)
        .fold(0.0_f64, |m, v| m.max(max_abs_diff(v, vals[0])));
    s + spread + f64::MIN_POSITIVE
}

/// Finds the kinks of the target on the given segments `(line, t0, t1)`. All queries of one bisection
/// level are sent as one batch.
pub fn find_critical_points<O: Oracle + ?Sized>(
    oracle: &CountingOracle<'_, O>,
    lines: &[Line],
    segments: &[(usize, f64, f64)],
    tol: SearchTol,
) -> Result<Vec<CriticalPoint>, OracleError> {
    // Initial intervals: ends and midpoint of every segment.
    let ys = oracle.query_generated(segments.len() * 3, |i, row| {
        let (l, t0, t1) = segments[i / 3];
        let t = [t0, 0.5 * (t0 + t1), t1][i % 3];
        lines[l].write_at(t, row);
    })?;
    let mut queue: Vec<Interval> = segments
        .iter()
        .enumerate()
        .map(|(k, &(l, t0, t1))| Interval {
            line: l,
            a: t0,
            m: 0.5 * (t0 + t1),
            b: t1,
            fa: ys[3 * k].clone(),
            fm: ys[3 * k + 1].clone(),
            fb: ys[3 * k + 2].clone(),
            min_len: (t1 - t0).abs() * tol.min_interval_rel,
            segment: k,
            segment_scale: ys[3 * k..3 * k + 3]
                .iter()
                .flatten()
                .fold(0.0_f64, |m, v| m.max(v.abs())),
        })
        .collect();
    let mut found: Vec<CriticalPoint> = Vec::new();
    let seg_len: Vec<f64> = segments
        .iter()
        .map(|&(_, t0, t1)| (t1 - t0).abs())
        .collect();
    let mut live = vec![0usize; segments.len()];
    let mut short_live = vec![0usize; segments.len()];
    while !queue.is_empty() {
        live.iter_mut().for_each(|c| *c = 0);
        short_live.iter_mut().for_each(|c| *c = 0);
        for iv in &queue {
            live[iv.segment] += 1;
            if iv.b - iv.a < SHORT_INTERVAL_REL * seg_len[iv.segment] {
                short_live[iv.segment] += 1;
            }
        }
        let noisy =
            |k: usize| live[k] > MAX_LIVE_PER_SEGMENT || short_live[k] > MAX_SHORT_LIVE_PER_SEGMENT;
        if (0..segments.len()).any(noisy) {
            let abandoned = (0..segments.len()).filter(|&k| noisy(k)).count();
            tracing::debug!(abandoned, "noise-dominated segments abandoned");
            queue.retain(|iv| !noisy(iv.segment));
            if queue.is_empty() {
                break;
            }
        }
        let ys = oracle.query_generated(queue.len() * 2, |i, row| {
            let iv = &queue[i / 2];
            let t = if i % 2 == 0 {
                0.5 * (iv.a + iv.m)
            } else {
                0.5 * (iv.m + iv.b)
            };
            lines[iv.line].write_at(t, row);
        })?;
        let mut next: Vec<Interval> = Vec::new();
        // Candidates: (interval, t*, predicted value, jump, f1, f3)
        let mut cands: Vec<Candidate> = Vec::new();
        for (k, iv) in queue.into_iter().enumerate() {
            let (q1, q3) = (0.5 * (iv.a + iv.m), 0.5 * (iv.m + iv.b));
            let f1 = ys[2 * k].clone();
            let f3 = ys[2 * k + 1].clone();
            let s = scale_of(&[&iv.fa, &iv.fb, &iv.fm, &f1, &f3]);
            let eps = (tol.rel_tol * s).max(tol.abs_floor);
            // Linear? Judged relative to the segment's magnitude as well as the interval's: where f
            // dips to near zero inside a segment its rounding stays at the magnitude of the sums that
            // cancel there. (The two-piece fit below keeps the interval's own, tighter scale: a
            // crossing is accepted only on strict evidence.)
            let eps_lin = eps.max(tol.rel_tol * iv.segment_scale);
            let lin = max_abs_diff(&f1, &lerp(q1, iv.a, &iv.fa, iv.b, &iv.fb)) <= eps_lin
                && max_abs_diff(&iv.fm, &lerp(iv.m, iv.a, &iv.fa, iv.b, &iv.fb)) <= eps_lin
                && max_abs_diff(&f3, &lerp(q3, iv.a, &iv.fa, iv.b, &iv.fb)) <= eps_lin;
            if lin {
                continue;
            }
            // Two-piece model: left through (a, q1), right through (q3, b).
            let sl: Vec<f64> = f1
                .iter()
                .zip(&iv.fa)
                .map(|(x, y)| (x - y) / (q1 - iv.a))
                .collect();
            let sr: Vec<f64> = iv
                .fb
                .iter()
                .zip(&f3)
                .map(|(x, y)| (x - y) / (iv.b - q3))
                .collect();
            let jump: Vec<f64> = sr.iter().zip(&sl).map(|(r, l)| r - l).collect();
            let c = (0..jump.len())
                .max_by(|&i, &j| jump[i].abs().total_cmp(&jump[j].abs()))
                .unwrap_or(0);
            let mut cand: Option<(f64, Vec<f64>)> = None;
            if jump[c].abs() > 0.0 {
                // fa + sl (t - a) = fb + sr (t - b)
                let t_star = (iv.fb[c] - iv.fa[c] + sl[c] * iv.a - sr[c] * iv.b) / (sl[c] - sr[c]);
                // Keep away from the quarter points: a crossing computed at q1 or q3 is what a corrupted
                // piece (kinks inside [a, q1]) produces, since both lines then pass through that point.
                let guard = 1e-3 * (iv.b - iv.a);
                if t_star.is_finite() && t_star > q1 + guard && t_star < q3 - guard {
                    let pred = |t: f64| -> Vec<f64> {
                        if t <= t_star {
                            iv.fa
                                .iter()
                                .zip(&sl)
                                .map(|(f, s)| f + s * (t - iv.a))
                                .collect()
                        } else {
                            iv.fb
                                .iter()
                                .zip(&sr)
                                .map(|(f, s)| f + s * (t - iv.b))
                                .collect()
                        }
                    };
                    if max_abs_diff(&iv.fm, &pred(iv.m)) <= eps {
                        cand = Some((t_star, pred(t_star)));
                    }
                }
            }
            if let Some((t_star, v)) = cand {
                cands.push((iv, t_star, v, jump, f1, f3));
                continue;
            }
            split(iv, q1, q3, f1, f3, &mut next);
        }
        if !cands.is_empty() {
            let ys = oracle.query_generated(cands.len(), |i, row| {
                lines[cands[i].0.line].write_at(cands[i].1, row)
            })?;
            for (k, (iv, t_star, v, jump, f1, f3)) in cands.into_iter().enumerate() {
                let s = scale_of(&[&iv.fa, &iv.fb, &iv.fm, &v]);
                if max_abs_diff(&ys[k], &v) <= (tol.rel_tol * s).max(tol.abs_floor) {
                    found.push(CriticalPoint {
                        line: iv.line,
                        t: t_star,
                        a: iv.a,
                        b: iv.b,
                        jump,
                    });
                } else {
                    let (q1, q3) = (0.5 * (iv.a + iv.m), 0.5 * (iv.m + iv.b));
                    split(iv, q1, q3, f1, f3, &mut next);
                }
            }
        }
        queue = next;
    }
    found.sort_by(|x, y| x.line.cmp(&y.line).then(x.t.total_cmp(&y.t)));
    Ok(found)
}

fn split(iv: Interval, q1: f64, q3: f64, f1: Vec<f64>, f3: Vec<f64>, next: &mut Vec<Interval>) {
    if (iv.b - iv.a) * 0.5 < iv.min_len {
        return;
    }
    next.push(Interval {
        line: iv.line,
        a: iv.a,
        m: q1,
        b: iv.m,
        fa: iv.fa,
        fm: f1,
        fb: iv.fm.clone(),
        min_len: iv.min_len,
        segment: iv.segment,
        segment_scale: iv.segment_scale,
    });
    next.push(Interval {
        line: iv.line,
        a: iv.m,
        m: q3,
        b: iv.b,
        fa: iv.fm,
        fm: f3,
        fb: iv.fb,
        min_len: iv.min_len,
        segment: iv.segment,
        segment_scale: iv.segment_scale,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::NetworkOracle;
    use netxray_relu::{Arch, InitRecipe, Network};

    /// A linear target `f = a·x` with deterministic pseudo-random noise of relative size `noise` (of
    /// `max(|f|, 1)`): no kinks at all, only rounding-like wobble.
    struct NoisyLinear {
        noise: f64,
    }

    impl Oracle for NoisyLinear {
        fn input_dim(&self) -> usize {
            2
        }
        fn output_dim(&self) -> usize {
            1
        }
        fn query_batch(&self, xs: faer::MatRef<'_, f64>) -> Result<faer::Mat<f64>, OracleError> {
            Ok(faer::Mat::from_fn(xs.nrows(), 1, |i, _| {
                let f = 0.7 * xs[(i, 0)] - 0.2 * xs[(i, 1)];
                let bits = (xs[(i, 0)].to_bits() ^ xs[(i, 1)].to_bits().rotate_left(17))
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let u = (bits >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                f + self.noise * u * f.abs().max(1.0)
            }))
        }
    }

    /// Searches the segment `[-3, 3]` of one line through the origin of a [`NoisyLinear`] target with
    /// the default f64 tolerances; returns the kinks found and the queries spent.
    fn search_noisy(noise: f64) -> (Vec<CriticalPoint>, u64) {
        let o = NoisyLinear { noise };
        let co = CountingOracle::new(&o, None);
        let line = Line {
            origin: vec![0.0, 0.0],
            dir: vec![0.6, 0.8],
        };
        let tol = SearchTol {
            rel_tol: 1e-10,
            min_interval_rel: 1e-11,
            abs_floor: 0.0,
        };
        let cps =
            find_critical_points(&co, std::slice::from_ref(&line), &[(0, -3.0, 3.0)], tol).unwrap();
        (cps, co.queries())
    }

    #[test]
    fn noise_near_a_zero_of_f_is_not_read_as_kinks() {
        // f crosses zero mid-segment; relative to the tiny |f| there, 1e-13 of the segment's
        // magnitude is far above the linearity tolerance, which used to split every interval down to
        // min_len (2^37 of them).
        let (cps, queries) = search_noisy(1e-13);
        assert!(cps.is_empty(), "{cps:?}");
        assert!(queries < 1000, "{queries} queries");
    }

    #[test]
    fn a_segment_whose_noise_beats_every_tolerance_is_abandoned_not_followed_forever() {
        let (_, queries) = search_noisy(1e-6);
        // Doubling up to the cap (~4·MAX_LIVE_PER_SEGMENT queries in all), not 2^37.
        assert!(
            queries < 8 * MAX_LIVE_PER_SEGMENT as u64,
            "{queries} queries"
        );
    }

    #[test]
    fn finds_every_first_layer_crossing_of_a_one_hidden_layer_net() {
        let net = Network::random(&"6-9-2".parse::<Arch>().unwrap(), InitRecipe::Balanced, 5);
        let w = net.layers()[0].clone();
        let o = NetworkOracle::new(net);
        let co = CountingOracle::new(&o, None);
        let line = Line {
            origin: vec![0.1, -0.3, 0.2, 0.4, -0.5, 0.05],
            dir: vec![0.7, 0.1, -0.4, 0.3, 0.2, -0.6],
        };
        let tol = SearchTol {
            rel_tol: 1e-10,
            min_interval_rel: 1e-12,
            abs_floor: 0.0,
        };
        let cps = find_critical_points(&co, std::slice::from_ref(&line), &[(0, -50.0, 50.0)], tol)
            .unwrap();
        // Ground truth: zeros of each hidden pre-activation along the line.
        let mut truth: Vec<f64> = (0..9)
            .filter_map(|r| {
                let z0: f64 = (0..6)
                    .map(|c| w.weight[(r, c)] * line.origin[c])
                    .sum::<f64>()
                    + w.bias[r];
                let z1: f64 = (0..6).map(|c| w.weight[(r, c)] * line.dir[c]).sum();
                let t = -z0 / z1;
                (t.abs() < 50.0).then_some(t)
            })
            .collect();
        truth.sort_by(f64::total_cmp);
        assert_eq!(cps.len(), truth.len(), "{cps:?} vs {truth:?}");
        for (c, t) in cps.iter().zip(&truth) {
            assert!((c.t - t).abs() < 1e-9 * (1.0 + t.abs()), "{} vs {}", c.t, t);
        }
    }
}
