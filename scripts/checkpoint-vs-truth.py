#!/usr/bin/env python3
"""White-box check of an extraction checkpoint against the target it attacked (development aid).

The attack never sees the target's weights; this script does, to score the hidden layers a run has
committed so far (`--resume DIR` writes them to `DIR/state.json`) before the run has finished and
`netxray model compare` can be used.

    scripts/checkpoint-vs-truth.py TARGET.safetensors CHECKPOINT_DIR

For each committed layer it prints the rows found (nonzero), the rows the run reported as partially
constrained (some inputs never constrained, set to 0), how many of the other ("complete") rows
matched a distinct true neuron, their wrong signs, and their row error: recovered rows are matched to
true rows by cosine (columns permuted and rescaled by the previous layer's match), and a row's error
is the largest entry difference of the unit-normalised [weight, bias] rows, relative to the row norm.
Zero rows (neurons not found) map to nothing in the next layer. Needs numpy.
"""
import json
import struct
import sys

import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] not in ("F64", "F32"):
            sys.exit(f"{path}: tensor {name} has dtype {meta['dtype']}, expected F64 or F32")
        dt = np.float64 if meta["dtype"] == "F64" else np.float32
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=dt).astype(np.float64).reshape(meta["shape"])
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    try:
        truth = read_safetensors(sys.argv[1])
        state = json.load(open(f"{sys.argv[2]}/state.json"))
    except (OSError, ValueError, struct.error) as e:
        sys.exit(f"checkpoint-vs-truth: {e}")
    # Column map of the previous layer: recovered unit j = scale[j] * true unit perm[j].
    perm, scale = None, None
    print("layer  found  partial  complete  distinct  wrong_signs  row_err_median  row_err_max")
    for k, layer in enumerate(state["layers"]):
        w = np.array(layer["weight"]).reshape(layer["out_dim"], layer["in_dim"])
        b = np.array(layer["bias"])
        if f"layers.{k}.weight" not in truth:
            sys.exit(f"checkpoint-vs-truth: the target has no layers.{k}.weight (another architecture?)")
        tw, tb = truth[f"layers.{k}.weight"], truth[f"layers.{k}.bias"]
        if perm is not None:
            # True pre-activation in recovered units: sum_j tw[:, perm[j]] * (a_j / scale[j]).
            tw = tw[:, perm] / scale[None, :]
        if tw.shape[1] != w.shape[1]:
            sys.exit(f"layer {k + 1}: recovered has {w.shape[1]} inputs, truth {tw.shape[1]}")
        rec = np.hstack([w, b[:, None]])
        tru = np.hstack([tw, tb[:, None]])
        found = np.linalg.norm(rec, axis=1) > 0
        partial = set(state["reports"][k].get("partially_constrained", []))
        complete = np.array([found[i] and i not in partial for i in range(len(rec))])
        # Zero rows get a unit placeholder so that the division below stays finite.
        rec_safe = np.where(found[:, None], rec, 1.0)
        rec_n = rec_safe / np.linalg.norm(rec_safe, axis=1, keepdims=True)
        tru_n = tru / np.linalg.norm(tru, axis=1, keepdims=True)
        cos = rec_n @ tru_n.T
        match = np.argmax(np.abs(cos), axis=1)
        sign = np.sign(cos[np.arange(len(match)), match])
        err = np.max(np.abs(rec_n - sign[:, None] * tru_n[match]), axis=1)[complete]
        wrong = int(np.sum(sign[complete] < 0))
        median = f"{np.median(err):14.2e}" if len(err) else f"{'-':>14}"
        worst = f"{err.max():11.2e}" if len(err) else f"{'-':>11}"
        print(
            f"{k + 1:5d}  {int(found.sum()):5d}  {len(partial):7d}  {int(complete.sum()):8d}"
            f"  {len(set(match[complete].tolist())):8d}  {wrong:11d}  {median}  {worst}"
        )
        # Recovered unit j = c_j * true unit match[j], with c_j = |rec row| / |true row| (signs
        # included); a zero row is a unit that is always 0, so its (meaningless) column is zeroed.
        perm = match
        scale = np.linalg.norm(rec, axis=1) / np.linalg.norm(tru[match], axis=1) * sign
        scale = np.where(found, scale, np.inf)


if __name__ == "__main__":
    main()
