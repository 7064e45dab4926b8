#!/usr/bin/env python3
# What the pretrained text embedding adds (the text analogue of ref_sound_baseline.py): on exactly
# the split and stream that `adaptd eval --export-embeddings DIR` wrote for a dataset of texts
# (one UTF-8 .txt file per sample, e.g. scripts/get_datasets.py fortunes or ovos), fits the same
# classifier on three representations of each text:
#   embedding:  the backbone's text embedding (train_x.npy / test_x.npy, e.g. paraphrase-MiniLM-
#               L3-v2, 384-d), StandardScaler + logistic regression as in ref_offline.py;
#   tfidf:      no transfer: TF-IDF of word unigrams and bigrams (lowercased, accents stripped as
#               the uncased tokenizer does, tokens of one or more word characters so that "a",
#               "I" and digits of short commands count, sublinear tf, L2-normalised rows);
#   tfidf_char: no transfer: TF-IDF of character 2..5-grams within word boundaries (char_wb,
#               same casing and weighting), which is often the stronger of the two on short
#               texts and few samples (spelling variants, inflections, no bigram sparsity).
# The vectorizer is fitted on the training samples used only (inside each cross-validation fold
# too), no scaler (the rows are already L2-normalised; standardising sparse n-gram counts would
# blow up the rare ones).
# Classifier: multinomial LogisticRegression (lbfgs), C picked by stratified cross-validation on
# the training samples used (ref_offline.py's `tuned`: grid 10^-5 ... 10^2, as many folds as the
# smallest class allows, at most 5); with one sample per class no cross-validation is possible
# and C = 1 (scikit-learn's default).
# Training sets: for each k of --shots, per class the first k training samples of the stream
# (train_y.npy is in stream order: the samples the streaming learners see first), or all of a
# class's samples when it has fewer than k (counted in "short_classes"); then every training
# sample ("all"). Test: the whole test split. Also the majority-class rate.
# The texts are read from the files named in DIR/files.json (paths as adaptd eval saw them: run
# from the same directory, or pass --root), as UTF-8, the whole file one text.
# Prints a table and writes DIR/text_baseline.json (or --out).
#
#   target/venv-eval/bin/python scripts/ref_text_baseline.py target/eval/fortunes
import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from ref_offline import LOGREG_C, load, tuned  # noqa: E402

# The two no-transfer representations: name -> TfidfVectorizer arguments.
TFIDF = {
    "tfidf": dict(analyzer="word", ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b",
                  lowercase=True, strip_accents="unicode", sublinear_tf=True),
    "tfidf_char": dict(analyzer="char_wb", ngram_range=(2, 5), lowercase=True,
                       strip_accents="unicode", sublinear_tf=True),
}


def read_text(path):
    """A sample file as adaptd reads it: the whole file, UTF-8."""
    with open(path, "rb") as f:
        return f.read().decode("utf-8")


def first_per_class(y, k):
    """Indices of the first k samples of each class in stream order (all of a class with fewer),
    and how many classes had fewer (as ref_sound_baseline.py)."""
    picked, seen = [], {}
    for i, c in enumerate(y):
        if seen.get(c, 0) < k:
            seen[c] = seen.get(c, 0) + 1
            picked.append(i)
    short = sum(1 for c in np.unique(y) if seen[c] < k)
    return np.array(picked), short


def one_sample_per_class(y_tr):
    return np.unique(y_tr, return_counts=True)[1].min() < 2


def fit_once(model, x_tr, y_tr, x_te, y_te):
    """C = 1 without cross-validation (one sample per class)."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # One sample per class: scikit-learn wonders whether y is a regression target.
        warnings.filterwarnings("ignore", message="The number of unique classes")
        model.fit(x_tr, y_tr)
    return {"accuracy": float(model.score(x_te, y_te)), "C": 1.0, "cv_accuracy": None,
            "fit_s": round(time.perf_counter() - t0, 2)}


def fit_embedding(x_tr, y_tr, x_te, y_te, jobs):
    """StandardScaler + LogisticRegression; C by CV when every class has two samples."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if not one_sample_per_class(y_tr):
        return tuned(x_tr, y_tr, x_te, y_te, LogisticRegression(max_iter=5000), "C", LOGREG_C,
                     jobs)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    return fit_once(model, x_tr, y_tr, x_te, y_te)


def fit_tfidf(settings, t_tr, y_tr, t_te, y_te, jobs):
    """TfidfVectorizer + LogisticRegression on raw texts (the vectorizer refitted in every CV
    fold); C by CV when every class has two samples. Also the vocabulary size on t_tr."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    if not one_sample_per_class(y_tr):
        model = make_pipeline(TfidfVectorizer(**settings), LogisticRegression(max_iter=5000))
        r = tuned(t_tr, y_tr, t_te, y_te, model, "logisticregression__C", LOGREG_C, jobs,
                  scale=False)
        r = {"accuracy": r["accuracy"], "C": r["logisticregression__C"],
             "cv_accuracy": r["cv_accuracy"], "fit_s": r["fit_s"]}
    else:
        model = make_pipeline(TfidfVectorizer(**settings),
                              LogisticRegression(C=1.0, max_iter=5000))
        r = fit_once(model, t_tr, y_tr, t_te, y_te)
    r["vocabulary"] = len(TfidfVectorizer(**settings).fit(t_tr).vocabulary_)
    return r


def main():
    ap = argparse.ArgumentParser(description="no-transfer baseline for a text dataset")
    ap.add_argument("dir", help="directory written by adaptd eval --export-embeddings")
    ap.add_argument("--shots", default="1,5,10", help="samples per class, comma-separated")
    ap.add_argument("--root", default=".", help="directory the paths in files.json are relative to")
    ap.add_argument("--out", help="output JSON (default DIR/text_baseline.json)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel CV fits")
    args = ap.parse_args()

    import sklearn

    emb_tr, y_tr, emb_te, y_te, meta = load(args.dir)
    with open(os.path.join(args.dir, "files.json")) as f:
        files = json.load(f)
    if len(files["train"]) != len(y_tr) or len(files["test"]) != len(y_te):
        sys.exit(f"{args.dir}: files.json does not match the embeddings")
    paths = [os.path.join(args.root, p) for p in files["train"] + files["test"]]
    bad = [p for p in paths if not p.lower().endswith(".txt") or not os.path.isfile(p)]
    if bad:
        sys.exit(f"not .txt files (or not found from --root {args.root}): {bad[:3]} ...")
    t0 = time.perf_counter()
    try:
        texts = [read_text(p) for p in paths]
    except UnicodeDecodeError as e:
        sys.exit(f"a text is not UTF-8: {e}")
    read_s = round(time.perf_counter() - t0, 1)
    t_tr, t_te = np.array(texts[: len(y_tr)], dtype=object), texts[len(y_tr):]

    from sklearn.feature_extraction.text import TfidfVectorizer

    classes = np.unique(np.concatenate([y_tr, y_te]))
    majority = np.bincount(y_tr).argmax()
    out = {
        "dataset": meta.get("dataset", os.path.basename(os.path.normpath(args.dir))),
        "train": int(len(y_tr)),
        "test": int(len(y_te)),
        "classes": int(len(classes)),
        "majority_class_accuracy": float(np.mean(y_te == majority)),
        # Vocabulary sizes on every training text (each row reports its own).
        "features": {"embedding": int(emb_tr.shape[1]),
                     **{name: len(TfidfVectorizer(**s).fit(list(t_tr)).vocabulary_)
                        for name, s in TFIDF.items()}},
        "tfidf_settings": {name: {k: (list(v) if isinstance(v, tuple) else v)
                                  for k, v in s.items()} for name, s in TFIDF.items()},
        "text_read_s": read_s,
        "results": [],
        "versions": {"scikit-learn": sklearn.__version__, "numpy": np.__version__,
                     "python": sys.version.split()[0]},
    }
    shots = [int(s) for s in args.shots.split(",") if s.strip()]
    for k in shots + [None]:
        if k is None:
            idx, short = np.arange(len(y_tr)), 0
        else:
            idx, short = first_per_class(y_tr, k)
        row = {"per_class": k if k is not None else "all", "samples": int(len(idx)),
               "short_classes": int(short)}
        row["embedding"] = fit_embedding(emb_tr[idx], y_tr[idx], emb_te, y_te, args.jobs)
        for name, settings in TFIDF.items():
            row[name] = fit_tfidf(settings, list(t_tr[idx]), y_tr[idx], t_te, y_te, args.jobs)
        out["results"].append(row)

    print(f"{out['dataset']}: {out['classes']} classes, {out['train']} train / {out['test']} test;"
          f" majority class {out['majority_class_accuracy']:.3f}")
    print("| per class | samples | word TF-IDF + logreg | char TF-IDF + logreg | "
          "embedding + logreg | C (word, char, emb.) |")
    print("|---|---|---|---|---|---|")
    for r in out["results"]:
        note = f" ({r['short_classes']} classes fewer)" if r["short_classes"] else ""
        print(f"| {r['per_class']} | {r['samples']}{note} | {r['tfidf']['accuracy']:.3f} | "
              f"{r['tfidf_char']['accuracy']:.3f} | {r['embedding']['accuracy']:.3f} | "
              f"{r['tfidf']['C']:g}, {r['tfidf_char']['C']:g}, {r['embedding']['C']:g} |")
    text = json.dumps(out, indent=2)
    with open(args.out or os.path.join(args.dir, "text_baseline.json"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
