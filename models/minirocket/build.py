#!/usr/bin/env python3
"""Build a MiniRocket feature extractor as a plain-op ONNX model for adaptd's sensor backbone.

MiniRocket (Dempster, Schmidt & Webb, KDD 2021) maps a window of C channels × T samples to F
features: 84 fixed length-9 kernels (weight -1 everywhere and 2 at the 3 positions of each
combination of 3 out of 9), applied at a set of dilations, each convolution output summarised
by the proportion of positive values (PPV) above a few biases. The dilations, the channel subsets
(multivariate) and the biases are fitted on example windows by aeon's own code
(aeon.transformations.collection.convolution_based.MiniRocket, `random_state=--seed`), so the
model's features equal `MiniRocket(n_kernels=F, random_state=seed).fit(X).transform(window)`.

The graph (opset 13, IR 7) has input `window` float32 [1, C, T] and output `features` float32
[1, F] in aeon's feature order (dilation-major, then the 84 kernels, then that dilation's
biases). Two forms (--graph):
  exact (default): the convolution outputs are computed with aeon's own float32 operations in
    aeon's order (Concat, Slice, Mul by -1 and 3, Add, Reshape; univariate: broadcast Adds over
    Slices of the 9 taps, no Gather; multivariate: Gather of the (combination, channel) pairs and
    aeon's channel sum), the positions a kernel does not count set to -inf by an exact Add of a
    constant mask, and each PPV is an exact count over all T positions (Greater against the
    biases, Cast, ReduceSum) divided in float64 (Cast, Div, Cast) and put in aeon's order
    (Gather of the [1, F] vector), so every feature is bit-identical to aeon's. This matters: the kernels' weights sum to 0, so on a
    constant stretch of a window the output is 0 in real arithmetic and a rounding residue in
    float32; aeon's biases are quantiles of training outputs and land on such residues (e.g.
    -4.77e-7 on ACSF1), so another summation order moves whole stretches across a bias.
  conv: one ONNX Conv (dilations, pads) per dilation and padding kind, then Squeeze, Unsqueeze,
    Greater, Cast, ReduceMean, Reshape, Concat and a Gather into aeon's order; faster, equal to
    aeon up to those ties (passes the check on BasicMotions, fails it on ACSF1).

Usage (from the repository root, in the venv of scripts/requirements-sensor.txt):

    python3 -m venv /tmp/venv-sensor
    /tmp/venv-sensor/bin/pip install -r scripts/requirements-sensor.txt
    /tmp/venv-sensor/bin/python models/minirocket/build.py \\
        --train aeon:BasicMotions/BasicMotions_TRAIN.ts --test aeon:BasicMotions/BasicMotions_TEST.ts \\
        --channel-names acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z \\
        --out models/minirocket-basicmotions --name minirocket-basicmotions

Arguments:
    --train FILE.ts      UCR/UEA .ts file of equal-length windows ("aeon:REL" = REL under the
                         installed aeon wheel's aeon/datasets/data/)
    --npy FILE.npy       or a float32 array n × C × T
    --test FILE.ts|.npy  optional further windows for the equality check only
    --channels i,j,..    keep only these channel indices (in this order)
    --channel-names a,b  names written into model.toml (default ch0, ch1, ...)
    --features N         feature count, >= 84, rounded down to a multiple of 84 like aeon (1344)
    --max-dilations M    aeon's max_dilations_per_kernel (32)
    --seed S             aeon's random_state (0)
    --out DIR            where minirocket.onnx, model.toml and README.md are written
    --name NAME          model name (default minirocket-<dataset>)
    --graph exact|conv   graph form (exact)
"""
import argparse
import hashlib
import os
import shlex
import sys
from itertools import combinations

import numpy as np

INDICES = np.array(list(combinations(range(9), 3)), dtype=np.int32)  # aeon's MiniRocket._indices
OPSET = 13
IR_VERSION = 7  # the IR version that goes with opset 13; onnxruntime 1.20 / tract read it
PRODUCER = "adaptd models/minirocket/build.py"
PRODUCER_VERSION = "2"  # 2: exact graph without per-feature Gather and position mask


# ---------------------------------------------------------------------------------------------
# Input


def aeon_data_dir():
    import aeon

    return os.path.join(os.path.dirname(aeon.__file__), "datasets", "data")


def resolve(path):
    if path.startswith("aeon:"):
        return os.path.join(aeon_data_dir(), path[len("aeon:"):])
    return path


def load_windows(path):
    """Returns (X float32 n×C×T, labels or None). Refuses unequal lengths and missing values."""
    path = resolve(path)
    if path.endswith(".npy"):
        X = np.load(path)
        if X.ndim != 3:
            sys.exit(f"{path}: expected an array n × C × T, got shape {X.shape}")
        y = None
    else:
        from aeon.datasets import load_from_ts_file

        X, y, meta = load_from_ts_file(path, return_meta_data=True)
        if not isinstance(X, np.ndarray) or X.ndim != 3 or not meta.get("equallength", True):
            lengths = sorted({x.shape[-1] for x in X}) if isinstance(X, list) else "?"
            sys.exit(
                f"{path}: windows of unequal length ({lengths[:3]}...{lengths[-3:]} samples); "
                "MiniRocket's ONNX model has a fixed input shape: make the windows equal length "
                "first (e.g. an _eq variant of the dataset)"
            )
    X = np.asarray(X)
    if not np.all(np.isfinite(X)):
        sys.exit(f"{path}: missing or non-finite values")
    return X.astype(np.float32), y


def select_channels(X, channels):
    if channels is None:
        return X
    C = X.shape[1]
    if len(set(channels)) != len(channels) or any(c < 0 or c >= C for c in channels):
        sys.exit(f"--channels {channels}: indices must be distinct and in 0..{C - 1}")
    return np.ascontiguousarray(X[:, channels, :])


# ---------------------------------------------------------------------------------------------
# Fit (aeon's own code)


def fit(X, features, max_dilations, seed):
    """aeon's MiniRocket fitted on X; returns the fitted transformer."""
    from aeon.transformations.collection.convolution_based import MiniRocket

    mr = MiniRocket(
        n_kernels=features, max_dilations_per_kernel=max_dilations, n_jobs=1, random_state=seed
    )
    mr.fit(X)
    return mr


def describe(params):
    n_ch_per_comb, ch_idx, dilations, nfpd, biases = params
    return {
        "dilations": [int(d) for d in dilations],
        "features_per_dilation": [int(n) for n in nfpd],
        "n_features": int(len(biases)),
        "n_convolutions": int(len(dilations) * len(INDICES)),
        "channels_per_combination": np.bincount(n_ch_per_comb).tolist(),
    }


# ---------------------------------------------------------------------------------------------
# ONNX graph


def kernel_weights(k):
    w = np.full(9, -1.0, dtype=np.float32)
    w[list(INDICES[k])] = 2.0
    return w


def kernel_table(params, C):
    """Per (dilation j, kernel k) in aeon's order: (j, k, channels, feature start, n features)."""
    n_ch_per_comb, ch_idx, dilations, nfpd, biases = params
    table, f_start, comb, ch_start = [], 0, 0, 0
    for j in range(len(dilations)):
        nf = int(nfpd[j])
        for k in range(len(INDICES)):
            n = int(n_ch_per_comb[comb])
            # aeon's univariate code (C == 1) ignores the channel draws: channel 0 throughout
            chans = [int(c) for c in ch_idx[ch_start:ch_start + n]] if C > 1 else [0]
            table.append((j, k, chans, f_start, nf))
            f_start += nf
            comb += 1
            ch_start += n
    assert f_start == len(biases)
    return table


class Graph:
    def __init__(self):
        self.nodes, self.inits, self.consts = [], [], {}

    def const(self, name, array):
        from onnx import numpy_helper

        array = np.asarray(array)
        if name in self.consts:  # shared constant: must be the same value
            assert np.array_equal(self.consts[name], array) and self.consts[name].dtype == array.dtype, name
            return name
        self.consts[name] = array
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type, inputs, output, **attrs):
        from onnx import helper

        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output


def i64(values):
    return np.asarray(values, dtype=np.int64)


def range_mask(dil, T, shape, parity):
    """[1, nd, 1, 1, 1, T]: 0 where the kernels of parity `parity` (k % 2) count position t at
    dilation j, -inf where they do not (the kernels that are not zero-padded, (j % 2 + k) % 2 != 0,
    count aeon's C[4d:-4d]). Adding it is exact where it is 0 (c + 0 = c; -0 becomes +0, which
    compares the same), and c + -inf = -inf is above no bias."""
    M = np.zeros(shape, np.float32)
    for j, d in enumerate(dil):
        if (j % 2 + parity) % 2 != 0:
            M[0, j, ..., :4 * d] = -np.inf
            M[0, j, ..., T - 4 * d:] = -np.inf
    return M


def shifted_window(g, C, T, dil):
    """x zero-padded (Concat) and each distinct shift s = (i-4)d of it once (Slice): {s: [C, 1, T]}."""
    P = 4 * max(dil)
    x3 = g.op("Reshape", ["window", g.const("shape_window", i64([C, 1, T]))], "window3")  # [C, 1, T]
    pad = g.const("zeros_pad", np.zeros((C, 1, P), np.float32))
    xp = g.op("Concat", [pad, x3, pad], "window_padded", axis=2)  # [C, 1, T + 2P]
    axes2 = g.const("axes_2", i64([2]))
    shifted = {}
    for sh in sorted({(i - 4) * d for d in dil for i in range(9)}):
        n = len(shifted)
        shifted[sh] = g.op("Slice", [xp, g.const(f"from_{n}", i64([P + sh])), g.const(f"to_{n}", i64([P + sh + T])),
                                     axes2], f"shift_{n}")
    return shifted


def conv_rows_uni(g, params, T):
    """Univariate: the convolution outputs as two tensors [1, nd, 42, 1, 1, T], the even and the
    odd kernels, -inf at the positions a kernel does not count. No Gather: every Add broadcasts
    one row over a Slice of the 9 taps, for all dilations at once."""
    dil = [int(d) for d in params[2]]
    nd, nk = len(dil), len(INDICES)
    shifted = shifted_window(g, 1, T, dil)
    D = g.op("Concat", [shifted[(i - 4) * d] for d in dil for i in range(9)], "taps", axis=1)  # [1, nd*9, T]
    D = g.op("Reshape", [D, g.const("shape_taps", i64([1, nd, 9, 1, 1, T]))], "taps6")
    A = g.op("Mul", [D, g.const("minus_one", np.array(-1.0, np.float32))], "alpha_x")  # -x
    G = g.op("Mul", [D, g.const("three", np.array(3.0, np.float32))], "gamma_x")  # 3x
    # G_p = G + mask: the last addition of a kernel of parity p brings its -inf
    Gp = [g.op("Add", [G, g.const(f"range_mask_{p}", range_mask(dil, T, (1, nd, 1, 1, 1, T), p))], f"gamma_x_{p}")
          for p in (0, 1)]
    axes_k = g.const("axes_k", i64([2]))
    cache = {}

    def rows(src, start, stop, step=1):  # src[:, :, start:stop:step]
        key = (src, start, stop, step)
        if key not in cache:
            ins = [src, g.const(f"k_from_{start}", i64([start])), g.const(f"k_to_{stop}", i64([stop])), axes_k]
            if step != 1:
                ins.append(g.const(f"k_step_{step}", i64([step])))
            cache[key] = g.op("Slice", ins, f"{src}_{start}_{stop}" + (f"_by{step}" if step != 1 else ""))
        return cache[key]

    acc = None
    for i in (4, 0, 1, 2, 3, 5, 6, 7, 8):
        Ai = rows(A, i, i + 1)
        acc = Ai if acc is None else g.op("Add", [acc, Ai], f"c_alpha_{i}")  # [1, nd, 1, 1, 1, T]
    S1 = g.op("Add", [acc, rows(G, 0, 7)], "c_a")  # [1, nd, 7, 1, 1, T]: C_alpha + G_a, a = 0..6
    k_of = {tuple(int(v) for v in INDICES[k]): k for k in range(nk)}
    blocks = {0: [], 1: []}  # parity of k -> Add outputs, in k order
    for a in range(7):
        S2 = g.op("Add", [rows(S1, a, a + 1), rows(G, a + 1, 8)], f"c_a{a}_b")  # + G_b, b = a+1..7
        for b in range(a + 1, 8):
            S2b = rows(S2, b - a - 1, b - a)
            k0 = k_of[(a, b, b + 1)]  # kernels (a, b, c), c = b+1..8, are k0, k0+1, ...
            for p in (0, 1):
                c0 = b + 1 + (p - k0) % 2  # first c whose kernel has parity p
                if c0 <= 8:
                    src = rows(Gp[p], c0, 9, 2) if c0 + 2 <= 8 else rows(Gp[p], c0, c0 + 1)
                    blocks[p].append(g.op("Add", [S2b, src], f"c_a{a}_b{b}_c{p}"))  # + G_c
    even = g.op("Concat", blocks[0], "c_even", axis=2)  # [1, nd, 42, 1, 1, T]
    odd = g.op("Concat", blocks[1], "c_odd", axis=2)
    return [(even, list(range(0, nk, 2))), (odd, list(range(1, nk, 2)))]


def conv_rows_multi(g, params, C, T):
    """Multivariate: the convolution outputs [1, nd, 84, 1, 1, T] summed over each combination's
    channels, -inf at the positions a kernel does not count. Computed only for the (combination,
    channel) pairs aeon sums (Gather of rows of C_alpha and of the taps of 3x), then
    0 + C[ch_0] + C[ch_1] + ... in aeon's drawn channel order (Gather, Add)."""
    n_ch_per_comb, ch_idx, dilations, nfpd, biases = params
    dil = [int(d) for d in dilations]
    nd, nk = len(dil), len(INDICES)
    n_comb = nd * nk
    shifted = shifted_window(g, C, T, dil)
    shifts = list(shifted)
    where = {sh: n for n, sh in enumerate(shifts)}
    D = g.op("Concat", list(shifted.values()), "shifted", axis=1)  # [C, n_shifts, T]
    A = g.op("Mul", [D, g.const("minus_one", np.array(-1.0, np.float32))], "alpha_x")  # -x
    G = g.op("Mul", [D, g.const("three", np.array(3.0, np.float32))], "gamma_x")  # 3x
    acc = None
    for i in (4, 0, 1, 2, 3, 5, 6, 7, 8):
        sel = g.const(f"alpha_tap{i}", i64([where[(i - 4) * d] for d in dil]))
        Ai = g.op("Gather", [A, sel], f"alpha_{i}", axis=1)  # [C, nd, T]
        acc = Ai if acc is None else g.op("Add", [acc, Ai], f"c_alpha_{i}")
    alpha_rows = g.op("Reshape", [acc, g.const("shape_alpha_rows", i64([C * nd, T]))], "alpha_rows")  # c*nd + j
    gamma_rows = g.op("Reshape", [G, g.const("shape_gamma_rows", i64([C * len(shifts), T]))], "gamma_rows")
    chans, start = [], 0
    for comb in range(n_comb):
        n = int(n_ch_per_comb[comb])
        chans.append([int(c) for c in ch_idx[start:start + n]])
        start += n
    steps = max(len(c) for c in chans)
    # step-major: every combination's first channel (in combination order), then the second
    # channels of those with two or more, ...
    pairs, pair_at = [], {}
    for step in range(steps):
        for comb, c in enumerate(chans):
            if step < len(c):
                pair_at[(comb, step)] = len(pairs)
                pairs.append((comb, c[step]))
    sel = i64([c * nd + comb // nk for comb, c in pairs])
    X = g.op("Gather", [alpha_rows, g.const("pair_alpha_rows", sel)], "pair_alpha", axis=0)
    for n, tag in enumerate("abc"):
        sel = i64([c * len(shifts) + where[(int(INDICES[comb % nk, n]) - 4) * dil[comb // nk]]
                   for comb, c in pairs])
        Gx = g.op("Gather", [gamma_rows, g.const(f"pair_gamma_rows_{tag}", sel)], f"pair_gamma_{tag}", axis=0)
        X = g.op("Add", [X, Gx], f"pair_c_{tag}")  # [n_pairs, T]
    rows = g.op("Slice", [X, g.const("start_0", i64([0])), g.const("n_comb", i64([n_comb])), g.const("axes_0", i64([0]))],
                "channel_sum0")  # the first channel of every combination
    if steps > 1:
        X0 = g.op("Concat", [X, g.const("zero_row", np.zeros((1, T), np.float32))], "pair_c0", axis=0)
        for step in range(1, steps):
            sel = i64([pair_at[(comb, step)] if step < len(c) else len(pairs) for comb, c in enumerate(chans)])
            term = g.op("Gather", [X0, g.const(f"channel_step{step}", sel)], f"channel_term{step}", axis=0)
            rows = g.op("Add", [rows, term], f"channel_sum{step}")  # [n_comb, T]
    # k = 2r + p: the mask depends on the dilation and the parity p of the kernel only
    rows = g.op("Reshape", [rows, g.const("shape_c_parity", i64([1, nd, nk // 2, 2, 1, T]))], "c_rows")
    mask = np.concatenate([range_mask(dil, T, (1, nd, 1, 1, 1, T), p) for p in (0, 1)], axis=3)
    rows = g.op("Add", [rows, g.const("range_mask", mask)], "c_counted")  # [1, nd, 42, 2, 1, T]
    return g.op("Reshape", [rows, g.const("shape_c", i64([1, nd, nk, 1, 1, T]))], "c_kernels")


def features_exact(g, params, C, T):
    """All F features of one window [1, C, T] -> [1, F], every value bit-identical to aeon's.

    The convolution outputs are computed with aeon's own float32 operations in aeon's order
    (numba's _static_transform_uni/_multi and _fit_biases), for all dilations at once: x zero-padded
    (Concat), each distinct shift s = (i-4) d of it once (Slice); A = -x, G = 3x (Mul);
    C_alpha = A_4 + A_0 + A_1 + A_2 + A_3 + A_5 + A_6 + A_7 + A_8 (left to right) with
    A_i[t] = A[t + (i-4) d]; C = ((C_alpha + G_a) + G_b) + G_c for kernel k's positions (a, b, c).
      univariate (conv_rows_uni, no Gather): the taps as [1, nd, 9, 1, 1, T] (Concat, Reshape);
        S1 = C_alpha + G_0..6 (one Add), S2[a] = S1[a] + G_{a+1..7} (one Add per a),
        C = S2[a, b] + G_c over c = b+1..8 (one Add per (a, b), on a Slice of the taps with step 2
        so the even and the odd kernels come out apart); Concat gives the even and the odd
        kernels [1, nd, 42, 1, 1, T].
      multivariate (conv_rows_multi): computed only for the (combination, channel) pairs aeon sums
        (Gather of rows of C_alpha and of the taps), then 0 + C[ch_0] + C[ch_1] + ... in aeon's
        drawn channel order (numba's np.sum(axis=0); Gather, Add), as [1, nd, 84, 1, 1, T].
    The positions a kernel does not count (aeon's C[4d:-4d] for the kernels that are not
    zero-padded, (j % 2 + k) % 2 != 0) are set to -inf by adding a constant mask, 0 elsewhere
    (univariate: into the last addend G_c; multivariate: after the channel sum); c + 0 is c and
    -inf is above no bias, so every PPV is a count over all T positions with no position mask.
    Each dilation is compared with its first bias on the whole tensor and the dilations with more
    biases (runs of equal count, Slice) with the others: Greater against biases
    [nd, K, 1, nb, 1], an exact count (Cast, ReduceSum over T), divided by L (T or T - 8d) in
    float64 (Cast, Div, Cast), as aeon's float64 mean cast to float32; one Gather over the [1, F]
    vector puts the features in aeon's order.
    """
    n_ch_per_comb, ch_idx, dilations, nfpd, biases = params
    nd, nk, F = len(dilations), len(INDICES), len(biases)
    dil = [int(d) for d in dilations]
    nf = [int(n) for n in nfpd]
    if C > 1:
        summed = conv_rows_multi(g, params, C, T)  # [1, nd, 84, 1, 1, T]
        groups = [(summed, list(range(nk)))]
    else:
        groups = conv_rows_uni(g, params, T)
    # compare: every dilation against its first bias (whole tensor), then the runs of dilations
    # with more biases against the others (Slice of those dilations)
    f_of_j = np.concatenate([[0], np.cumsum([nk * n for n in nf])]).astype(np.int64)
    pieces, flat_f = [], []
    runs = [(0, nd, 0, 1)]  # (j from, j to, first bias, n biases)
    j = 0
    while j < nd:
        e = j
        while e < nd and nf[e] == nf[j]:
            e += 1
        if nf[j] > 1:
            runs.append((j, e, 1, nf[j] - 1))
        j = e
    for gi, (tensor, ks) in enumerate(groups):
        for j0, j1, b0, nb in runs:
            q = f"g{gi}_d{j0}_{j1}_b{b0}"
            t = tensor
            if (j0, j1) != (0, nd):
                t = g.op("Slice", [tensor, g.const(f"j_from_{j0}", i64([j0])), g.const(f"j_to_{j1}", i64([j1])),
                                   g.const("axes_1", i64([1]))], f"{q}_c")
            B = np.empty((j1 - j0, len(ks), 1, nb, 1), np.float32)
            fidx = np.empty((j1 - j0, len(ks), nb), np.int64)
            for jj in range(j0, j1):
                for r, k in enumerate(ks):
                    fs = int(f_of_j[jj]) + k * nf[jj] + b0
                    B[jj - j0, r, 0, :, 0] = biases[fs:fs + nb]
                    fidx[jj - j0, r, :] = np.arange(fs, fs + nb)
            gt = g.op("Greater", [t, g.const(f"{q}_bias", B)], f"{q}_gt")  # [1, nj, K, 1, nb, T]
            gtf = g.op("Cast", [gt], f"{q}_gtf", to=1)
            cnt = g.op("ReduceSum", [gtf, g.const("axes_5", i64([5]))], f"{q}_count", keepdims=0)
            pieces.append(g.op("Reshape", [cnt, g.const(f"{q}_shape", i64([1, fidx.size]))], f"{q}_flat"))
            flat_f.append(fidx.ravel())
    flat_f = np.concatenate(flat_f)
    assert sorted(flat_f.tolist()) == list(range(F))
    L = np.array(ppv_lengths(params, T), np.float64)[flat_f]
    cnt = g.op("Concat", pieces, "count", axis=1) if len(pieces) > 1 else pieces[0]  # [1, F]
    # aeon: float64 mean, stored as float32. Dividing in float64 keeps that exact even where a
    # runtime replaces x / L by x * (1/L) (tract does): c * fl64(1/L) rounds to the same float32
    # as c / L for every c <= L <= 5000 (checked exhaustively); in float32 a quarter would be 1 ulp off.
    cnt64 = g.op("Cast", [cnt], "count_f64", to=11)  # DOUBLE
    ppv64 = g.op("Div", [cnt64, g.const("range_len", L[None, :])], "ppv_f64")
    ppv = g.op("Cast", [ppv64], "ppv", to=1)  # FLOAT
    perm = np.empty(F, np.int64)  # features[:, f] = ppv[:, perm[f]]
    perm[flat_f] = np.arange(F)
    return g.op("Gather", [ppv, g.const("aeon_order", perm)], "features", axis=1)


def features_conv(g, params, C, T):
    """All F features with ONNX Conv: per dilation d one Conv (kernel 9, dilation d, pads 4d) for
    the zero-padded kernels and one (pads 0) for the others, weight -1 and 2 at the kernel's three
    positions on the combination's channels, 0 elsewhere. ONNX Conv is a cross-correlation,
    which is aeon's orientation (C[t] = sum_i w_i x[t + (i-4) d]). Equal to aeon up to float32
    summation order, i.e. up to outputs that tie with a bias."""
    biases, dilations = params[4], params[2]
    table = kernel_table(params, C)
    pieces, order = [], []
    for j, d in enumerate(dilations):
        d = int(d)
        for padded in (True, False):
            ks = [ki for ki in table if ki[0] == j and ((j % 2 + ki[1]) % 2 == 0) == padded]
            K, nf = len(ks), ks[0][4]
            W = np.zeros((K, C, 9), dtype=np.float32)
            B = np.zeros((K, nf, 1), dtype=np.float32)
            for r, (_, k, chans, fs, _) in enumerate(ks):
                for c in chans:
                    W[r, c, :] = kernel_weights(k)
                B[r, :, 0] = biases[fs:fs + nf]
                order.extend(range(fs, fs + nf))
            q = f"d{j}_{'pad' if padded else 'valid'}"
            pad = 4 * d if padded else 0
            conv = g.op(
                "Conv", ["window", g.const(f"{q}_w", W)], f"{q}_conv",
                kernel_shape=[9], dilations=[d], pads=[pad, pad], strides=[1], group=1,
            )  # [1, K, L]
            c = g.op("Squeeze", [conv, g.const("axes_0", i64([0]))], f"{q}_c")  # [K, L]
            c3 = g.op("Unsqueeze", [c, g.const("axes_1", i64([1]))], f"{q}_c3")  # [K, 1, L]
            gt = g.op("Greater", [c3, g.const(f"{q}_bias", B)], f"{q}_gt")  # [K, nf, L]
            gtf = g.op("Cast", [gt], f"{q}_gtf", to=1)
            ppv = g.op("ReduceMean", [gtf], f"{q}_ppv", axes=[2], keepdims=0)  # [K, nf]
            pieces.append(g.op("Reshape", [ppv, g.const(f"{q}_shape", i64([1, K * nf]))], f"{q}_flat"))
    perm = np.empty(len(biases), dtype=np.int64)  # features[:, i] = concat[:, perm[i]]
    perm[np.array(order)] = np.arange(len(biases))
    g.op("Concat", pieces, "concat", axis=1)
    return g.op("Gather", ["concat", g.const("aeon_order", perm)], "features", axis=1)


def build_onnx(params, C, T, name, metadata, graph="exact"):
    """The ONNX model (bytes) computing aeon's MiniRocket features of one window [1, C, T].

    aeon's C_alpha + C_gamma[a] + C_gamma[b] + C_gamma[c] for dilation d is
    C[t] = sum_i w[i] * x[t + (i - 4) d] with x zero outside 0..T-1 and w = -1, 2 at a, b, c:
    a dilated cross-correlation (no kernel flip) with pads 4d. Kernels with (j % 2 + k) % 2 == 0
    take the PPV over all T positions; the others over C[4d:-4d] (the unpadded convolution).
    The multivariate variant sums C over the combination's channels. aeon uses its univariate
    code when C == 1: there every combination is channel 0.
    graph="exact": features_exact (bit-identical); graph="conv": features_conv.
    """
    import onnx
    from onnx import TensorProto, helper

    g = Graph()
    out = (features_exact if graph == "exact" else features_conv)(g, params, C, T)
    assert out == "features"
    F = len(params[4])
    model = helper.make_model(
        helper.make_graph(
            g.nodes,
            name,
            [helper.make_tensor_value_info("window", TensorProto.FLOAT, [1, C, T])],
            [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, F])],
            initializer=g.inits,
        ),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        producer_version=PRODUCER_VERSION,
        doc_string="MiniRocket features (aeon-compatible); see README.md beside this file",
    )
    model.ir_version = IR_VERSION
    model.model_version = 1
    for key, value in metadata:
        p = model.metadata_props.add()
        p.key, p.value = key, str(value)
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString(deterministic=True)


# ---------------------------------------------------------------------------------------------
# Equality check


def ort_features(onnx_bytes, X):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["features"], {"window": X[i:i + 1]})[0] for i in range(len(X))])


def ppv_lengths(params, T):
    """The number of positions L each feature's PPV is taken over (T or T - 8d)."""
    _, _, dilations, nfpd, _ = params
    L = []
    for j, d in enumerate(dilations):
        for k in range(len(INDICES)):
            L += [T if (j % 2 + k) % 2 == 0 else T - 8 * int(d)] * int(nfpd[j])
    return np.array(L)


def compare(ours, ref, L):
    diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    flips = np.rint(diff * L[None, :]).astype(np.int64)  # positions on the other side of a bias
    return {
        "values": int(diff.size),
        "max_abs_diff": float(diff.max()),
        "differing": int((flips > 0).sum()),
        "fraction_differing": float((flips > 0).mean()),
        "max_flipped_positions": int(flips.max()),
        "not_bit_equal": int((ours != ref).sum()),
    }


def check(onnx_bytes, mr, X, label):
    ours = ort_features(onnx_bytes, X)
    ref = np.asarray(mr.transform(X), dtype=np.float32)
    r = compare(ours, ref, ppv_lengths(mr.parameters, X.shape[2]))
    r["windows"] = int(len(X))
    print(
        f"check {label}: {r['windows']} windows × {X.shape[1]}×{X.shape[2]}: max |onnx - aeon| = "
        f"{r['max_abs_diff']:.3g}, differing {r['differing']}/{r['values']} "
        f"({100 * r['fraction_differing']:.4f}%), max flipped positions {r['max_flipped_positions']}, "
        f"not bit-equal {r['not_bit_equal']}"
    )
    ok = r["fraction_differing"] <= 0.001 and r["max_flipped_positions"] <= 2
    return r, ok


# ---------------------------------------------------------------------------------------------
# Output


def sha256_bytes(b):
    return hashlib.sha256(b).hexdigest()


def sha256_file(path):
    with open(path, "rb") as f:
        return sha256_bytes(f.read())


def source_description(path):
    """(text, sha256) naming where a data file came from."""
    real = os.path.realpath(resolve(path))
    sha = sha256_file(real)
    try:
        import aeon

        base = os.path.realpath(os.path.dirname(aeon.__file__))
        if real.startswith(base + os.sep):
            rel = "aeon/" + os.path.relpath(real, base).replace(os.sep, "/")
            return f"`{rel}` from the PyPI wheel aeon=={aeon.__version__}", sha
    except ImportError:
        pass
    return f"`{os.path.basename(real)}`", sha


def toml_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_model_toml(path, name, sha, C, T, channel_names):
    chans = ", ".join(toml_str(c) for c in channel_names)
    text = f"""# MiniRocket features (generated by models/minirocket/build.py; see README.md)
name = {toml_str(name)}
file = "minirocket.onnx"
sha256 = "{sha}"
embedding_output = "features"   # [1, F] proportions of positive values (PPV)

[input]
name = "window"
shape = [1, {C}, {T}]      # channels × samples

[sensor]
channels = [{chans}]
normalise = "none"       # the windows are fed as they come (MiniRocket is fitted on raw windows)
"""
    with open(path, "w") as f:
        f.write(text)


def write_readme(path, a, info, X, train_src, test_src, sha, size, ops, checks, channel_names, versions):
    d = info
    from_archive = train_src[0].startswith("`aeon/datasets/data/")
    cmd = shlex.join(["models/minirocket/build.py"] + sys.argv[1:])
    chans_per = ", ".join(f"{n}: {c}" for n, c in enumerate(d["channels_per_combination"]) if c)
    lines = [
        f"# {a.name}",
        "",
        "MiniRocket feature extractor (Dempster, Schmidt & Webb, *MINIROCKET: A Very Fast (Almost)",
        "Deterministic Transform for Time Series Classification*, KDD 2021) as a plain-op ONNX model",
        "for adaptd's sensor backbone. Generated by `models/minirocket/build.py`; do not edit by hand.",
        "",
        f"- input `window`: float32 [1, {X.shape[1]}, {X.shape[2]}] (channels × samples), channels "
        f"{', '.join(channel_names)}; fed raw (no normalisation)",
        f"- output `features`: float32 [1, {d['n_features']}], in aeon's order (dilation-major, then "
        "the 84 kernels, then the biases of that dilation); each value is a proportion of positive "
        "values (PPV), k/L",
        f"- file `minirocket.onnx`: {size} bytes, SHA-256 `{sha}`; opset {OPSET}, IR {IR_VERSION}; "
        f"graph form `{a.graph}`, ops {', '.join(ops)}",
        "",
        "## Graph",
        "",
    ]
    if a.graph == "exact":
        lines += [
            "The window is zero-padded (Concat), each distinct shift (i-4)·d of it taken once "
            "(Slice), A = -x and G = 3x (Mul), and the convolution outputs of all dilations "
            "are computed exactly as aeon's numba code does, in the same order, so each float32 "
            "value is bit-identical: C_alpha = A_4 + A_0 + A_1 + A_2 + A_3 + A_5 + A_6 + A_7 + A_8 "
            "(A_i[t] = A[t + (i-4)d]), C = ((C_alpha + G_a) + G_b) + G_c for the kernel's "
            "three positions (a, b, c)"
            + (", computed for the (kernel, channel) pairs used (Gather of rows), and for several "
               "channels 0 + C[ch_0] + C[ch_1] + ... in aeon's drawn channel order (Gather, Add)."
               if X.shape[1] > 1 else
               ": for one channel with no Gather, each Add broadcasting one row over a Slice of the "
               "9 taps for all dilations at once (C_alpha + G_0..6, then + G_b for b > a, then "
               "+ G_c for c > b, the c's split by kernel parity with a step-2 Slice), Concat into "
               "the even and the odd kernels.")
            + " The positions a kernel does not count (4d..T-4d is counted by the kernels that are "
            "not zero-padded) are set to -inf by adding a constant mask that is 0 elsewhere "
            "(exact: c + 0 = c, and -inf is above no bias). Each feature's PPV is then an exact "
            "count over all T positions (Greater against the biases, broadcast over T and the "
            "dilations; Cast, ReduceSum) divided by the number of counted positions in float64 "
            "(Cast, Div, Cast back to float32), as aeon's float64 mean stored as float32, and one "
            "Gather of the [1, F] vector puts the features in aeon's order; float64 also keeps the "
            "division exact where a runtime replaces x / L by "
            "x · (1/L), as tract does (in float32 that would change the last bit of about a "
            "quarter of the values). A runtime keeps the whole graph bit-exact as long as it does "
            "not reorder the additions or fuse them with the multiplications. No Conv is used.",
            "",
            "Why: the kernels' weights sum to 0, so on a constant stretch of a window the output "
            "is 0 in real arithmetic and a float32 rounding residue in practice; aeon's biases are "
            "quantiles of training outputs and can sit on such a residue (on ACSF1 a bias is "
            "-4.77e-7), and a Conv's different summation order then moves whole stretches across "
            "the bias (ACSF1 with `--graph conv`: 4.6% of the features differ, by up to 991 of "
            "1460 positions).",
        ]
    else:
        lines += [
            "For each dilation d, one Conv (kernel 9, dilation d, pads 4d) for the zero-padded "
            "kernels and one (pads 0) for the others; weight -1 with 2 at the kernel's three "
            "positions, on the combination's channels, 0 on the others. ONNX Conv is a "
            "cross-correlation, which is aeon's orientation (C[t] = sum_i w_i x[t + (i-4)d]). "
            "Equal to aeon up to float32 summation order, i.e. up to ties at a bias.",
        ]
        lines += [
            "",
            "Then, per group of kernels, the PPV: Unsqueeze to [K, 1, L], Greater against the biases "
            "[K, nf, 1], Cast, ReduceMean over L; Reshape, Concat, and one Gather into aeon's order.",
        ]
    lines += [
        "",
        "## How it was made",
        "",
        "```",
        cmd,
        "```",
        "",
        f"- training windows: {train_src[0]}, SHA-256 `{train_src[1]}`; {X.shape[0]} windows"
        + (f", channels {a.channels} kept" if a.channels is not None else ", all channels"),
    ]
    if test_src:
        lines.append(f"- check windows: {test_src[0]}, SHA-256 `{test_src[1]}`")
    lines += [
        f"- fitted with aeon's own code: `MiniRocket(n_kernels={a.features}, "
        f"max_dilations_per_kernel={a.max_dilations}, random_state={a.seed}).fit(X)` "
        f"(aeon {versions['aeon']}, numpy {versions['numpy']}, numba {versions['numba']}); the "
        "model's features equal that transformer's `transform` of the same window"
        + (" bit for bit" if a.graph == "exact" else " up to float32 ties")
        + (" (aeon's multivariate code, `_static_transform_multi`)" if X.shape[1] > 1
           else " (aeon's univariate code, `_static_transform_uni`)"),
        f"- seed (random_state): {a.seed}",
        f"- dilations: {d['dilations']}",
        f"- features per dilation (per kernel): {d['features_per_dilation']}",
        f"- features: {d['n_features']} = 84 kernels × {sum(d['features_per_dilation'])}"
        + (f" (--features {a.features} rounded down to a multiple of 84, as aeon does)"
           if a.features != d["n_features"] else ""),
        f"- kernels: the 84 fixed MiniRocket kernels (length 9, weight -1, and 2 at the 3 positions "
        f"of each combination of 3 out of 9) at {len(d['dilations'])} dilations: "
        f"{d['n_convolutions']} (kernel, dilation) convolutions; half of them (alternating) are "
        "zero-padded (PPV over all T positions), the other half are not (PPV over T - 8·dilation)",
        f"- channels per combination (how many of the {d['n_convolutions']} convolutions sum over "
        f"1, 2, ... channels; drawn by aeon with the seed): {chans_per}",
        "- biases: aeon's procedure: for each (kernel, dilation) one training window is drawn at "
        "random (seeded), the convolution output over it computed, and the biases are its "
        "quantiles at the low-discrepancy points (i·φ) mod 1 (np.quantile, linear interpolation)",
        "",
        "## Equality check (onnxruntime vs aeon)",
        "",
        "PPV features are fractions k/L; a difference can only come from a convolution output that "
        "lands on the other side of a bias through floating-point rounding (a tie). The build "
        "fails if more than 0.1% of the values differ or any differs by more than 2 positions.",
        "",
        "| windows | values | max abs diff | differing values | max flipped positions | not bit-equal |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, r in checks:
        lines.append(
            f"| {label} ({r['windows']}) | {r['values']} | {r['max_abs_diff']:.3g} | "
            f"{r['differing']} ({100 * r['fraction_differing']:.4f}%) | {r['max_flipped_positions']} | "
            f"{r['not_bit_equal']} |"
        )
    lines += [
        "",
        f"(onnxruntime {versions['onnxruntime']}, onnx {versions['onnx']}.)",
        "",
        "## Licence",
        "",
        "The model holds no third-party weights: only the 84 fixed MiniRocket kernels, a permutation, "
        "and biases computed from the training windows named above. The fitting code is aeon's "
        "(BSD-3-Clause), adapted there from the authors' reference implementation (no code of "
        "either is in the model)."
        + (" The windows come from the UCR/UEA time-series classification archive "
           "(timeseriesclassification.com) as bundled in aeon's wheel; the archive's datasets are "
           "made freely available for research use, and the .ts file states no licence of its own."
           if from_archive else " The licence of the training windows is their owner's."),
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def model_ops(onnx_bytes):
    import onnx

    return sorted({n.op_type for n in onnx.load_from_string(onnx_bytes).graph.node})


def versions():
    import aeon
    import numba
    import onnx
    import onnxruntime

    return {
        "aeon": aeon.__version__,
        "numpy": np.__version__,
        "numba": numba.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--train", help="UCR/UEA .ts file (aeon:REL = under aeon's datasets/data)")
    src.add_argument("--npy", help="float32 array n × C × T")
    ap.add_argument("--test", help="further windows for the check (.ts or .npy)")
    ap.add_argument("--channels", help="channel indices to keep, e.g. 0,1,2")
    ap.add_argument("--channel-names", help="names for model.toml, e.g. x,y,z")
    ap.add_argument("--features", type=int, default=1344)
    ap.add_argument("--max-dilations", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name")
    ap.add_argument("--graph", choices=["exact", "conv"], default="exact")
    a = ap.parse_args(argv)
    if a.features < 84:
        sys.exit("--features must be >= 84 (84 kernels, at least one feature each)")
    if a.max_dilations < 1:
        sys.exit("--max-dilations must be >= 1")
    a.channels = [int(c) for c in a.channels.split(",")] if a.channels else None

    train_path = a.train or a.npy
    X, _ = load_windows(train_path)
    X = select_channels(X, a.channels)
    n, C, T = X.shape
    if T < 9:
        sys.exit(f"windows of {T} samples: MiniRocket needs at least 9")
    channel_names = a.channel_names.split(",") if a.channel_names else [f"ch{i}" for i in range(C)]
    if len(channel_names) != C:
        sys.exit(f"--channel-names gives {len(channel_names)} names for {C} channels")
    stem = os.path.basename(resolve(train_path)).rsplit(".", 1)[0]
    stem = stem[:-6] if stem.endswith("_TRAIN") else stem
    a.name = a.name or f"minirocket-{stem.lower()}"

    mr = fit(X, a.features, a.max_dilations, a.seed)
    info = describe(mr.parameters)
    print(
        f"{a.name}: {n} windows × {C} channels × {T} samples; dilations {info['dilations']}, "
        f"features per dilation {info['features_per_dilation']}, {info['n_features']} features"
    )
    train_src = source_description(train_path)
    metadata = [
        ("generator", PRODUCER),
        ("method", "MiniRocket (aeon-compatible PPV features)"),
        ("seed", a.seed),
        ("n_features", info["n_features"]),
        ("max_dilations_per_kernel", a.max_dilations),
        ("dilations", ",".join(map(str, info["dilations"]))),
        ("features_per_dilation", ",".join(map(str, info["features_per_dilation"]))),
        ("channels", ",".join(channel_names)),
        ("train_sha256", train_src[1]),
        ("graph", a.graph),
    ]
    onnx_bytes = build_onnx(mr.parameters, C, T, a.name, metadata, a.graph)
    again = build_onnx(mr.parameters, C, T, a.name, metadata, a.graph)
    assert again == onnx_bytes, "serialisation is not deterministic"

    checks = []
    r, ok = check(onnx_bytes, mr, X, "train")
    checks.append(("train", r))
    test_src = None
    if a.test:
        Xt, _ = load_windows(a.test)
        Xt = select_channels(Xt, a.channels)
        if Xt.shape[1:] != (C, T):
            sys.exit(f"--test windows are {Xt.shape[1]}×{Xt.shape[2]}, the model's {C}×{T}")
        r2, ok2 = check(onnx_bytes, mr, Xt, "test")
        checks.append(("test", r2))
        ok = ok and ok2
        test_src = source_description(a.test)
    if not ok:
        print("FAIL: more than 0.1% of the values differ or one differs by more than 2/L", file=sys.stderr)
        return 1

    os.makedirs(a.out, exist_ok=True)
    onnx_path = os.path.join(a.out, "minirocket.onnx")
    with open(onnx_path, "wb") as f:
        f.write(onnx_bytes)
    sha = sha256_bytes(onnx_bytes)
    write_model_toml(os.path.join(a.out, "model.toml"), a.name, sha, C, T, channel_names)
    write_readme(
        os.path.join(a.out, "README.md"), a, info, X, train_src, test_src, sha, len(onnx_bytes),
        model_ops(onnx_bytes), checks, channel_names, versions(),
    )
    print(f"wrote {onnx_path} ({len(onnx_bytes)} bytes, sha256 {sha}), model.toml, README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
