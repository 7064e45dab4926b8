#!/usr/bin/env python3
"""How well `auto` picks its candidate at 1, 5 and 10 samples per class, over stream orders.

A reference analysis in numpy, not adaptd: it re-implements auto's ten candidates (ncm, ncm_std,
slda@{0.5,0.1,0.01,0.001} shrunk toward the mean-variance identity, ridge@{1,0.1,0.01,0.001}
with lambda = alpha tr(XtX)/d) and the fixed-default single learners (ncm, slda eps=1e-4,
ridge lambda=1) on embeddings exported by `adaptd eval --export-embeddings DIR`, streams the
training split in several seeded orders (seed 0 = adaptd's order), scores each labeled sample
with every candidate before learning it, applies auto's rule (most right over the last 100
scored samples, a tie keeps the current choice, start at ncm) and reports, at the first point
where every class has k samples, auto's test accuracy minus the best fixed-default single
learner's, the same with adaptd's leave-one-out rule (brute force here: a refit without each of
the last 200 samples; it decides once every class seen has two samples), and the default ncm's. Candidates are solved in the span of the samples seen (exact,
and fast while n < d). Prints one line per dataset and k: mean and worst over the seeds.

    python3 scripts/auto_selection_sim.py --seeds 0,1,2,3,4 DIR [DIR ...]
"""
import argparse
import numpy as np

SL = [0.5, 0.1, 0.01, 0.001]
RI = [1.0, 0.1, 0.01, 0.001]
NAMES = ["ncm", "ncm_std"] + [f"slda@{e}" for e in SL] + [f"ridge@{a}" for a in RI]
K = len(NAMES)


def unit(v):
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n > 0, n, 1)


def fit(x, y, C, D):
    """Scorers (z -> [n, C] logits, -inf for classes not seen) of the candidates, then the
    fixed-default slda and ridge."""
    t = len(y)
    classes = sorted(set(y.tolist()))
    ci = np.array(classes)
    mu = x.mean(0)
    var = x.var(0)
    sc = 1 / np.sqrt(var + 0.01 * var.mean()) if var.mean() > 0 else np.ones(D)
    M = np.stack([x[y == k].mean(0) for k in classes], 1)
    cnt = np.array([(y == k).sum() for k in classes], float)
    R = x - M.T[np.searchsorted(classes, y)]
    Mc = M - mu[:, None]
    Q, _ = np.linalg.qr((x - mu).T)
    Rq, Mcq = R @ Q, Q.T @ Mc
    out = []
    nm = unit(np.stack([unit(x[y == k]).sum(0) for k in classes], 0))
    out.append(lambda z: unit(z) @ nm.T)
    Ms = unit((Mc * sc[:, None]).T)
    out.append(lambda z: unit((z - mu) * sc) @ Ms.T)
    Sw = Rq.T @ Rq
    w, V = np.linalg.eigh(Sw)
    w = np.maximum(w, 0)
    VtM = V.T @ Mcq
    mv = w.sum() / t / D if w.sum() > 0 else 1.0
    lin = []
    for e in SL:
        dg = (1 - e) * w / t + e * mv
        lin.append(Q @ (V @ (VtM / dg[:, None])))
    A = Sw + (Mcq * np.sqrt(cnt)) @ (Mcq * np.sqrt(cnt)).T
    w2, V2 = np.linalg.eigh(A)
    w2 = np.maximum(w2, 0)
    Vt = V2.T @ (Mcq * cnt)
    for a in RI + ["fixed"]:
        lam = 1.0 if a == "fixed" else a * w2.sum() / D
        lin.append(Q @ (V2 @ (Vt / np.maximum(w2 + lam, 1e-300)[:, None])))
    dg = (1 - 1e-4) * w / t + 1e-4
    lin.insert(len(SL), Q @ (V @ (VtM / dg[:, None])))  # fixed slda after the slda grid
    for i, W in enumerate(lin):
        is_slda = i <= len(SL)
        b = -0.5 * (Mc * W).sum(0) if is_slda else cnt / t
        out.append(lambda z, W=W, b=b: (z - mu) @ W + b)
    # order: ncm, ncm_std, slda x4, slda fixed, ridge x4, ridge fixed -> reorder
    order = [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 6, 11]

    def f(z):
        S = np.full((len(order), len(z), C), -np.inf)
        for k, j in enumerate(order):
            S[k][:, ci] = out[j](z)
        return S.argmax(2)

    return f


def run(d, seed):
    X = np.load(f"{d}/train_x.npy").astype(np.float64)
    Y = np.load(f"{d}/train_y.npy")
    TX = np.load(f"{d}/test_x.npy").astype(np.float64)
    TY = np.load(f"{d}/test_y.npy")
    C = int(max(Y.max(), TY.max()) + 1)
    n, D = X.shape
    if seed:
        p = np.random.default_rng(seed).permutation(n)
        X, Y = X[p], Y[p]
    seen = np.zeros(C, int)
    present = set(Y.tolist())
    hits, shots = [], {}
    for t in range(1, n):
        seen[Y[t - 1]] += 1
        least = min(seen[k] for k in present)
        f = None
        if seen[Y[t]] > 0:
            f = fit(X[:t], Y[:t], C, D)
            hits.append((t, f(X[t:t + 1])[:K, 0] == Y[t]))
        for k in (1, 5, 10):
            if k not in shots and least >= k:
                f = f or fit(X[:t], Y[:t], C, D)
                shots[k] = (t, (f(TX) == TY).mean(1))
        if len(shots) == 3:
            break
    res = {}
    for k, (t, acc) in shots.items():
        choice = 0
        H = np.array([h for tt, h in hits if tt < t]).reshape(-1, K)
        for r in range(len(H)):
            win = H[max(0, r - 99):r + 1].sum(0)
            if win[choice] != win.max():
                choice = int(np.argmax(win))
        # Leave-one-out over the last 200 samples seen (refit without each): the choice once
        # it scores 10 samples and every class seen has two, a tie going to the prequential
        # window's preference, as adaptd's check (src/head/loo.rs, head/auto.rs).
        counts = np.bincount(Y[:t], minlength=C)
        loo = loo_hits(X[:t], Y[:t], C, D) if counts[counts > 0].min() >= 2 else None
        lchoice = choice
        if loo is not None:
            # Ties go to the window's preference, then the current choice, then the first.
            win = H[max(0, len(H) - 100):].sum(0) if len(H) else np.zeros(K, int)
            key = [(loo[j], win[j]) for j in range(K)]
            if key[choice] != max(key):
                lchoice = key.index(max(key))
        best = max(acc[0], acc[K], acc[K + 1])
        res[k] = (acc[choice] - best, acc[0] - best, acc[lchoice] - best)
    return res


def loo_hits(x, y, C, D, recent=200, least=10):
    """Per candidate, how many of the last `recent` samples it labels right when fitted on
    the others; None when fewer than `least` samples can be scored (class of one)."""
    t = len(y)
    hits = np.zeros(K, int)
    scored = 0
    for i in range(max(0, t - recent), t):
        if (y == y[i]).sum() < 2:
            continue
        keep = np.ones(t, bool)
        keep[i] = False
        f = fit(x[keep], y[keep], C, D)
        hits += f(x[i:i + 1])[:K, 0] == y[i]
        scored += 1
    return hits if scored >= least else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("dirs", nargs="+")
    a = ap.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    for d in a.dirs:
        per = {}
        for s in seeds:
            for k, v in run(d, s).items():
                per.setdefault(k, []).append(v)
        for k in sorted(per):
            v = np.array(per[k]) * 100
            print(f"{d} {k}/class: auto - best single {v[:, 0].mean():+.1f} "
                  f"(worst {v[:, 0].min():+.1f}), with leave-one-out {v[:, 2].mean():+.1f} "
                  f"(worst {v[:, 2].min():+.1f}), ncm - best single {v[:, 1].mean():+.1f} "
                  f"(worst {v[:, 1].min():+.1f}) points over {len(v)} orders", flush=True)


if __name__ == "__main__":
    main()
