#!/usr/bin/env python3
"""White-box look at the worst recovered rows of one layer of a finished extraction (development aid).

    scripts/rows-vs-truth.py TARGET.safetensors STOLEN.safetensors LAYER [SAMPLES]

LAYER counts hidden layers from 1. Units of the stolen net are matched to true units by the
correlation of their pre-activations on SAMPLES (default 20,000) standard-normal inputs, seed 0, and
each stolen row is compared with its true row in true coordinates (scaled by the fitted ratio of the
previous layer's pre-activations). For the three worst rows it prints their worst entries: the
previous-layer unit, the relative error, how often that unit is active on the inputs, and how often
it is active among the 5 % of inputs closest to the row's own boundary — whether the missing evidence
is rare under random inputs or only where the attack looked. Needs numpy.
"""
import importlib.util
import os
import sys

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("cvt", os.path.join(here, "checkpoint-vs-truth.py"))
cvt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cvt)

if len(sys.argv) not in (4, 5):
    sys.exit(__doc__)
try:
    T = cvt.read_safetensors(sys.argv[1])
    S = cvt.read_safetensors(sys.argv[2])
    layer = int(sys.argv[3])
    n = int(sys.argv[4]) if len(sys.argv) == 5 else 20000
except (OSError, ValueError) as e:
    sys.exit(f"rows-vs-truth: {e}")
if n < 2:
    sys.exit("SAMPLES must be at least 2")
depth = sum(1 for k in T if k.endswith(".weight"))
if not 2 <= layer < depth:
    sys.exit(f"LAYER must be between 2 and {depth - 1} (a hidden layer with a hidden layer before it)")

x = np.random.default_rng(0).standard_normal((n, T["layers.0.weight"].shape[1]))


def pre_activations(p):
    h, out = x, []
    for i in range(layer):
        z = h @ p[f"layers.{i}.weight"].T + p[f"layers.{i}.bias"]
        out.append(z)
        h = np.maximum(z, 0)
    return out


zt, zs = pre_activations(T), pre_activations(S)


def match(a, b):
    a = (a - a.mean(0)) / (a.std(0) + 1e-300)
    b = (b - b.mean(0)) / (b.std(0) + 1e-300)
    c = a.T @ b / len(a)
    return c.argmax(1)


prev_s, prev_t = zs[layer - 2], zt[layer - 2]
m_prev = match(prev_s, prev_t)
m_row = match(zs[layer - 1], zt[layer - 1])
scale = np.array([np.dot(prev_t[:, m_prev[c]], prev_s[:, c]) / np.dot(prev_t[:, m_prev[c]], prev_t[:, m_prev[c]])
                  for c in range(prev_s.shape[1])])
w_s, w_t = S[f"layers.{layer - 1}.weight"], T[f"layers.{layer - 1}.weight"]
active_prev = (prev_t > 0).mean(0)
errors = []
for r in range(w_s.shape[0]):
    w = w_s[r] * scale
    wt = w_t[m_row[r], m_prev]
    k = (w @ wt) / (wt @ wt)
    errors.append(np.abs(w - k * wt) / np.linalg.norm(k * wt))
row_error = np.array([e.max() for e in errors])
print(f"layer {layer}: row error (max entry / row norm) median {np.median(row_error):.3g}")
for r in np.argsort(-row_error)[:3]:
    t = m_row[r]
    z = zt[layer - 1][:, t]
    near = np.abs(z) < np.quantile(np.abs(z), 0.05)
    print(f"stolen row {r} = true {t}: error {row_error[r]:.3g}, active on {np.mean(z > 0):.3f} of inputs")
    for c in np.argsort(-errors[r])[:3]:
        u = m_prev[c]
        print(f"  input unit {u} (stolen {c}): error {errors[r][c]:.3g}, stolen weight {w_s[r, c]:.3g}, "
              f"active on {active_prev[u]:.3f}, on {np.mean(prev_t[near, u] > 0):.3f} near the row's boundary")
