#!/usr/bin/env python3
"""adaptd's text path vs its references, per stage and end to end, one thread, in one invocation.

adaptd (Rust WordPiece tokenizer + tract, `adaptd bench --text FILE --json`) against the references
the model was verified with (tests/data/text/make_refs.py): Hugging Face `tokenizers` for the
tokenizer and onnxruntime (1 intra-op thread, 1 inter-op thread, sequential) for the encoder. The
Python tokenizer is `Tokenizer.from_file` on a tokenizer.json that this script builds from
models/paraphrase-minilm-l3/vocab.txt with `BertWordPieceTokenizer` exactly as make_refs.py does
(lowercase, strip accents, clean_text, CJK spacing, "##", [UNK], [CLS] ... [SEP], truncated to 128
ids, no padding), or on --tokenizer-json (e.g. sentence-transformers' MiniLM tokenizer.json; its
padding to 128 is switched off). Per text:

  (a) tokenizer: text -> ids (adaptd: `Tokenizer::encode` on the validated str; Python:
      `Tokenizer.encode(str).ids`); the ids adaptd reports must equal the Python ids;
  (b) encoder: ids -> embedding on the same ids, attention mask all ones (output "461");
  (c) end to end: text bytes -> embedding (adaptd: `Embedder::embed_payload`; Python: UTF-8
      decode, tokenizers, numpy arrays, onnxruntime);

each --runs timed calls after --warmup untimed ones; the two sides alternate for --rounds rounds
(adaptd a fresh process each round and text, onnxruntime a fresh session and `tokenizers` a fresh
Tokenizer each round) and the table takes the median over rounds of each round's median.

Texts, written to --out-dir as UTF-8 without a trailing newline: a short command (7 tokens), a
medium sentence (32 tokens), a log line (39 tokens) and a paragraph cut at exactly 128 tokens
(make_refs.py's LOREM, 130 tokens uncut). Also:
  - the cosine between `adaptd embed --json` (one process, all texts) and onnxruntime's embedding
    of the Python ids (target >= 0.9999), and, where tests/data/text has the text, that the Python
    ids equal tokenizer_cases.json and that onnxruntime's embedding matches embeddings.json;
  - model load: adaptd's load_ms (vocabulary + encoder) vs onnxruntime session creation (and
    Tokenizer.from_file);
  - peak RSS: `adaptd embed` of the 128-token text vs a Python process that imports numpy,
    onnxruntime and tokenizers, loads the tokenizer, creates the session and embeds the same text.
    Both whole-process peaks are "Maximum resident set size" of /usr/bin/time -v (without it:
    ru_maxrss from wait4(2) in a small helper process; not from this script directly, since Linux
    carries the forking process's peak into the child's ru_maxrss across exec); the Python child
    also reads its own VmHWM with nothing imported, after the imports and at the end, so its
    growth over the bare interpreter and over interpreter + imports is shown.
Prints markdown for docs/benchmarks.md; --json also writes the raw results to --out-dir.

    python3.11 -m venv /tmp/venv-text
    # the pins of tests/data/text/requirements.txt:
    /tmp/venv-text/bin/pip install numpy==2.4.6 onnxruntime==1.20.1 tokenizers==0.23.3
    models/paraphrase-minilm-l3/fetch
    cargo build --release
    /tmp/venv-text/bin/python scripts/bench_text.py --adaptd target/release/adaptd [--json]
    # adaptd's side alone (text, or one JSON line with --json):
    target/release/adaptd bench --model models/paraphrase-minilm-l3 --text target/bench-text/long_128.txt
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported: the reference runs on one thread
os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one text at a time: no rayon pool either way

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tokenizers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from tokenizers.implementations import BertWordPieceTokenizer  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
MODEL_DIR = os.path.join(ROOT, "models", "paraphrase-minilm-l3")
REFS = os.path.join(ROOT, "tests", "data", "text")
MAX_TOKENS = 128
EMBEDDING_OUTPUT = "461"
COSINE_TARGET = 0.9999

# make_refs.py's LOREM (130 tokens uncut): also in tests/data/text/embeddings.json.
LOREM = (
    "The quick brown fox jumps over the lazy dog while the porch light flickers and the "
    "thermostat in the hallway reports twenty one degrees. Somebody asked the assistant to "
    "dim the kitchen lights, start the dishwasher at midnight, and remind everyone that the "
    "recycling goes out on Tuesday morning before seven. Meanwhile the garage door sensor "
    "complained about a low battery, the washing machine finished its cycle, and the garden "
    "sprinklers were scheduled to run for fifteen minutes after sunset unless it rains. "
    "Tomorrow's forecast predicts scattered showers, gusty winds from the northwest, and "
    "temperatures dropping sharply overnight, so please close the upstairs windows."
)

TEXTS = [  # (file name, text, what)
    ("short_command.txt", "turn the porch light off", "short command"),
    ("medium_sentence.txt",
     "Could you dim the living room lights to thirty percent, and remind me to take the laundry "
     "out of the dryer in about forty-five minutes?", "medium sentence"),
    ("log_line.txt", "[2026-12-06 07:13:48,123] WARN adaptd::daemon: mqtt reconnect in 5s (attempt 3/10)",
     "log line"),
    ("long_128.txt", LOREM, "paragraph, cut at 128 tokens"),
]


def write_texts(out_dir):
    """[(name, path, text, what)], the files written as UTF-8 bytes without a trailing newline."""
    os.makedirs(out_dir, exist_ok=True)
    texts = []
    for name, text, what in TEXTS:
        path = os.path.join(out_dir, name)
        with open(path, "wb") as f:
            f.write(text.encode("utf-8"))
        texts.append((name, path, text, what))
    return texts


# ---------------------------------------------------------------------------- reference

def build_tokenizer_json(vocab, out_dir):
    """make_refs.py's tokenizer, saved as tokenizer.json (truncation to 128, no padding)."""
    tok = BertWordPieceTokenizer(
        vocab, clean_text=True, handle_chinese_chars=True, strip_accents=None,
        lowercase=True, wordpieces_prefix="##", unk_token="[UNK]",
    )
    tok.no_padding()
    tok.enable_truncation(MAX_TOKENS)
    path = os.path.join(out_dir, "tokenizer.json")
    tok.save(path)
    return path


def load_tokenizer(path):
    tok = Tokenizer.from_file(path)
    tok.no_padding()  # the MiniLM tokenizer.json pads to 128; adaptd does not
    tok.enable_truncation(MAX_TOKENS)
    return tok


def session_options():
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return so


class Reference:
    """tokenizers + onnxruntime, loaded fresh (one round)."""

    def __init__(self, model, tokenizer_json):
        t0 = time.perf_counter()
        self.sess = ort.InferenceSession(model, session_options(), providers=["CPUExecutionProvider"])
        self.load_ms = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        self.tok = load_tokenizer(tokenizer_json)
        self.tokenizer_load_ms = (time.perf_counter() - t0) * 1e3

    def ids(self, text):
        return self.tok.encode(text).ids

    def encoder(self, ids):
        x = np.asarray([ids], dtype=np.int64)
        return self.sess.run([EMBEDDING_OUTPUT], {"input_ids": x, "attention_mask": np.ones_like(x)})[0][0]

    def embed(self, blob):
        return self.encoder(self.ids(blob.decode("utf-8")))


def timed(f, warmup, runs):
    for _ in range(warmup):
        f()
    times = []
    for _ in range(max(1, runs)):
        t = time.perf_counter()
        f()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def ref_round(ref, text, blob, warmup, runs):
    ids = ref.ids(text)
    x = np.asarray([ids], dtype=np.int64)
    feeds = {"input_ids": x, "attention_mask": np.ones_like(x)}
    return {
        "ids": ids,
        "tokenizer": timed(lambda: ref.tok.encode(text).ids, warmup, runs),
        "encoder": timed(lambda: ref.sess.run([EMBEDDING_OUTPUT], feeds), warmup, runs),
        "end_to_end": timed(lambda: ref.embed(blob), warmup, runs),
    }


# ---------------------------------------------------------------------------- adaptd

def run_json_lines(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def adaptd_round(adaptd, model, path, warmup, runs):
    return run_json_lines([adaptd, "bench", "--json", "--model", model, "--text", path,
                           "--runs", str(runs), "--warmup", str(warmup)])[0]


def cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---------------------------------------------------------------------------- peak RSS

# The Python side of the memory comparison, run as its own process. It reads its own VmHWM
# (peak RSS of its address space, which exec(2) starts afresh; ru_maxrss would not do here: it
# carries the peak of the process that forked it across exec) with nothing imported, after the
# imports, and after tokenizer + session + one text.
RSS_CHILD = r"""
import json, resource, sys
def peak():
    try:
        with open("/proc/self/status") as f:
            return int(next(line.split()[1] for line in f if line.startswith("VmHWM:")))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
bare = peak()
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer
imports = peak()
model, tokenizer_json, text_path = sys.argv[1:4]
so = ort.SessionOptions()
so.intra_op_num_threads = 1
so.inter_op_num_threads = 1
so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
tok = Tokenizer.from_file(tokenizer_json)
tok.no_padding()
tok.enable_truncation(128)
ids = tok.encode(open(text_path, "rb").read().decode("utf-8")).ids
x = np.asarray([ids], dtype=np.int64)
e = sess.run(["461"], {"input_ids": x, "attention_mask": np.ones_like(x)})[0][0]
assert e.shape == (384,)
print(json.dumps({"bare_kib": bare, "imports_kib": imports, "peak_kib": peak(), "tokens": len(ids)}))
"""

# Without /usr/bin/time: a bare interpreter (-S, nothing imported) spawns the command and reports
# its ru_maxrss from wait4(2). The spawner must be small: Linux carries the peak RSS of the
# forking process into the child's ru_maxrss across exec, so this script (a few hundred MiB with
# a session loaded) cannot fork the command itself; the helper's ~8 MiB is a floor far below
# what is measured.
WAIT4_HELPER = r"""
import os, subprocess, sys
p = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(p.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""
TIME = "/usr/bin/time"


def max_rss(cmd):
    """(stdout, peak RSS KiB) of `cmd`: "Maximum resident set size" of /usr/bin/time -v if it is
    there, else ru_maxrss from wait4(2) in a small helper process."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as report:
        if os.access(TIME, os.X_OK):
            wrapped = [TIME, "-v", "-o", report.name] + cmd
        else:
            wrapped = [sys.executable, "-S", "-c", WAIT4_HELPER, report.name] + cmd
        p = subprocess.run(wrapped, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} exited {p.returncode}: {p.stderr}")
        text = report.read()
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return p.stdout, int(m.group(1)) if m else int(text.strip())


def rss_method():
    return ("/usr/bin/time -v" if os.access(TIME, os.X_OK)
            else "ru_maxrss from wait4(2) in a bare-interpreter helper")


def peak_rss(args, ref_model, tokenizer_json, path):
    _, adaptd_kib = max_rss([args.adaptd, "embed", "--json", "--model", args.model, path])
    out, py_kib = max_rss([sys.executable, "-c", RSS_CHILD, ref_model, tokenizer_json, path])
    py = json.loads(out)
    py["total_kib"] = py_kib
    return {"adaptd_kib": adaptd_kib, "python": py}


# ---------------------------------------------------------------------------- report

def machine_line():
    model = platform.processor() or platform.platform()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
        mem = f", {kib / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores{mem}, {model}"


def mib(kib):
    return kib / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--adaptd", default=os.path.join(ROOT, "target", "release", "adaptd"))
    ap.add_argument("--model", default=MODEL_DIR, help="the text model directory")
    ap.add_argument("--tokenizer-json", help="use this tokenizer.json instead of building one from vocab.txt")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "target", "bench-text"),
                    help="where the texts, tokenizer.json and (--json) results.json go")
    ap.add_argument("--json", action="store_true", help="also write the raw results to OUT_DIR/results.json")
    args = ap.parse_args()
    args.adaptd = os.path.abspath(args.adaptd)
    model_toml = open(os.path.join(args.model, "model.toml")).read()
    onnx_file = next(line.split("=", 1)[1].split("#")[0].strip().strip('"')
                     for line in model_toml.splitlines() if line.startswith("file"))
    ref_model = os.path.join(args.model, onnx_file)

    texts = write_texts(args.out_dir)
    tokenizer_json = args.tokenizer_json or build_tokenizer_json(os.path.join(args.model, "vocab.txt"), args.out_dir)
    uncut = Tokenizer.from_file(tokenizer_json)
    uncut.no_padding()
    uncut.no_truncation()
    uncut_tokens = {name: len(uncut.encode(text).ids) for name, _, text, _ in texts}

    load_before = os.getloadavg()
    rounds = {name: {"adaptd": [], "ref": []} for name, *_ in texts}
    ref_load, tok_load = [], []
    for k in range(args.rounds):
        ref = Reference(ref_model, tokenizer_json)
        ref_load.append(ref.load_ms)
        tok_load.append(ref.tokenizer_load_ms)
        for name, path, text, _ in texts:
            blob = open(path, "rb").read()
            # Alternate which side goes first, so a drift in load favours neither.
            sides = [("adaptd", lambda: adaptd_round(args.adaptd, args.model, path, args.warmup, args.runs)),
                     ("ref", lambda: ref_round(ref, text, blob, args.warmup, args.runs))]
            for side, f in sides if k % 2 == 0 else sides[::-1]:
                rounds[name][side].append(f())
            a, r = rounds[name]["adaptd"][-1], rounds[name]["ref"][-1]
            if a["ids"] != r["ids"]:
                at = next((i for i, (x, y) in enumerate(zip(a["ids"], r["ids"])) if x != y),
                          min(len(a["ids"]), len(r["ids"])))
                sys.exit(f"{name}: adaptd's ids differ from tokenizers' at position {at} "
                         f"({len(a['ids'])} vs {len(r['ids'])} ids)\n adaptd:     {a['ids']}\n tokenizers: {r['ids']}")
    load_after = os.getloadavg()

    # Peak RSS, on the 128-token text (the largest activations), once per round.
    long_path = texts[-1][1]
    rss = [peak_rss(args, ref_model, tokenizer_json, long_path) for _ in range(args.rounds)]

    # Embeddings: adaptd embed (one process, every text) vs tokenizers + onnxruntime.
    ref = Reference(ref_model, tokenizer_json)
    emb = {os.path.basename(r["file"]): r["embedding"]
           for r in run_json_lines([args.adaptd, "embed", "--json", "--model", args.model] + [p for _, p, _, _ in texts])}
    cases = {c["text"]: c["ids"] for c in json.load(open(os.path.join(REFS, "tokenizer_cases.json")))["cases"]}
    golden = {c["text"]: c["embedding"] for c in json.load(open(os.path.join(REFS, "embeddings.json")))["cases"]}

    med = statistics.median
    rows, checks = [], []
    for name, path, text, what in texts:
        a, r = rounds[name]["adaptd"], rounds[name]["ref"]
        stage = {s: (med(v[s]["median_ms"] for v in a), med(v[s] for v in r))
                 for s in ("tokenizer", "encoder", "end_to_end")}
        first = a[0]
        rows.append((name, what, first["bytes"], first["tokens"], uncut_tokens[name], first["truncated"], stage))
        ids = r[0]["ids"]
        ref_emb = ref.encoder(ids)
        cos = cosine(emb[name], ref_emb)
        diff = float(np.abs(np.asarray(emb[name], np.float64) - ref_emb).max())
        case_ids = cases.get(text)
        gold = golden.get(text)
        checks.append({
            "text": name, "tokens": len(ids), "ids_equal": first["ids"] == ids,
            "ids_vs_cases": None if case_ids is None else case_ids == ids,
            "cosine": cos, "max_abs_diff": diff, "norm": float(np.linalg.norm(ref_emb)),
            "ref_vs_golden_cosine": None if gold is None else cosine(ref_emb, gold),
            "ref_vs_golden_max_abs_diff": None if gold is None else float(np.abs(np.asarray(gold) - ref_emb).max()),
        })

    first = rounds[texts[0][0]]["adaptd"][0]
    adaptd_load = med(v["load_ms"] for n, *_ in texts for v in rounds[n]["adaptd"])
    print(f"machine: {machine_line()}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"adaptd binary: {os.path.relpath(args.adaptd, ROOT)} (tract {first['version']}); reference: "
          f"tokenizers {tokenizers.__version__} (Tokenizer.from_file, "
          f"{'--tokenizer-json ' + args.tokenizer_json if args.tokenizer_json else 'tokenizer.json built from vocab.txt'}), "
          f"onnxruntime {ort.__version__} (1 thread, sequential), numpy {np.__version__}; "
          f"python {platform.python_version()}")
    print(f"{args.rounds} rounds x {args.runs} runs after {args.warmup} warm-up, one thread each side; "
          "median over rounds of each round's median\n")
    print("| text | bytes | tokens | tokenizer: Rust µs | tokenizers µs | Rust / tokenizers "
          "| encoder: tract ms | onnxruntime ms | tract / ort "
          "| end to end: adaptd ms | tokenizers + ort ms | adaptd / ref |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    ratios = {"tokenizer": [], "encoder": [], "end_to_end": []}
    for name, what, nbytes, tokens, uncut_n, truncated, stage in rows:
        cells = []
        for s in ("tokenizer", "encoder", "end_to_end"):
            rust, refv = stage[s]
            ratios[s].append(rust / refv)
            if s == "tokenizer":
                cells.append(f"{rust * 1e3:.1f} | {refv * 1e3:.1f} | **{rust / refv:.2f}×**")
            else:
                cells.append(f"{rust:.2f} | {refv:.2f} | **{rust / refv:.2f}×**")
        tok_cell = f"{tokens} (cut from {uncut_n})" if truncated else str(tokens)
        print(f"| {name} ({what}) | {nbytes} | {tok_cell} | " + " | ".join(cells) + " |")
    print("\nratios, median over texts (min–max): " + "; ".join(
        f"{s.replace('_', ' ')} {med(v):.2f}× ({min(v):.2f}–{max(v):.2f})" for s, v in ratios.items()))

    print("\n| model load | ms (median) |")
    print("|---|---|")
    print(f"| adaptd `Embedder::load` (vocabulary + encoder), `load_ms` of {len(texts) * args.rounds} bench processes "
          f"| {adaptd_load:.0f} |")
    print(f"| onnxruntime `InferenceSession` ({args.rounds} sessions) | {med(ref_load):.0f} |")
    print(f"| tokenizers `Tokenizer.from_file` ({args.rounds} loads) | {med(tok_load):.1f} |")

    ad = med(r["adaptd_kib"] for r in rss)
    total = med(r["python"]["total_kib"] for r in rss)
    bare = med(r["python"]["bare_kib"] for r in rss)
    imp = med(r["python"]["imports_kib"] for r in rss)
    grown = med(r["python"]["peak_kib"] for r in rss)
    spread = lambda vals: f"{mib(min(vals)):.1f}–{mib(max(vals)):.1f}"  # noqa: E731
    print(f"\nPeak RSS of a fresh process embedding {texts[-1][0]} ({rows[-1][3]} tokens), median of {args.rounds} "
          f"(min–max); whole process: {rss_method()}; the Python breakdown: its own VmHWM (/proc/self/status) "
          "at start, after the imports and at the end:\n")
    print("| process | peak RSS MiB | min–max |")
    print("|---|---|---|")
    print(f"| `adaptd embed --json` (load + one text) | **{mib(ad):.1f}** | {spread([r['adaptd_kib'] for r in rss])} |")
    print(f"| python: tokenizers + onnxruntime session + one text | **{mib(total):.1f}** "
          f"| {spread([r['python']['total_kib'] for r in rss])} |")
    print(f"| python: its VmHWM at the end | {mib(grown):.1f} | {spread([r['python']['peak_kib'] for r in rss])} |")
    print(f"| python: its VmHWM before any import (bare interpreter) | {mib(bare):.1f} "
          f"| {spread([r['python']['bare_kib'] for r in rss])} |")
    print(f"| python: its VmHWM after importing numpy, onnxruntime, tokenizers | {mib(imp):.1f} "
          f"| {spread([r['python']['imports_kib'] for r in rss])} |")
    print(f"\npython's growth: {mib(grown - bare):.1f} MiB over the bare interpreter, {mib(grown - imp):.1f} MiB over "
          f"interpreter + imports (session, tokenizer, one run); adaptd / python: {ad / total:.2f}× the whole "
          f"process, {ad / (grown - bare):.2f}× python's growth over the bare interpreter")

    print(f"\n| text | tokens | ids adaptd = tokenizers | ids = tokenizer_cases.json "
          f"| cosine `adaptd embed` vs tokenizers + ort (target ≥ {COSINE_TARGET}) | max abs diff | norm "
          "| ort vs embeddings.json (cosine, max abs diff) |")
    print("|---|---|---|---|---|---|---|---|")
    ok = True
    for c in checks:
        ok &= c["cosine"] >= COSINE_TARGET and c["ids_equal"] and c["ids_vs_cases"] is not False
        ok &= c["ref_vs_golden_cosine"] is None or c["ref_vs_golden_cosine"] >= COSINE_TARGET
        cases_cell = "—" if c["ids_vs_cases"] is None else ("yes" if c["ids_vs_cases"] else "**NO**")
        gold = ("—" if c["ref_vs_golden_cosine"] is None
                else f"{c['ref_vs_golden_cosine']:.8f}, {c['ref_vs_golden_max_abs_diff']:.1e}")
        print(f"| {c['text']} | {c['tokens']} | {'yes' if c['ids_equal'] else '**NO**'} | {cases_cell} "
              f"| {c['cosine']:.8f} (1 − cos = {1 - c['cosine']:.1e}) | {c['max_abs_diff']:.2e} | {c['norm']:.3f} | {gold} |")
    print(f"\nall ids equal and all cosines ≥ {COSINE_TARGET}: {'yes' if ok else 'NO'}")

    if args.json:
        path = os.path.join(args.out_dir, "results.json")
        with open(path, "w") as f:
            json.dump({
                "machine": machine_line(), "load_average": [load_before, load_after],
                "adaptd": args.adaptd, "tokenizer_json": tokenizer_json,
                "versions": {"tokenizers": tokenizers.__version__, "onnxruntime": ort.__version__,
                             "numpy": np.__version__, "python": platform.python_version(),
                             "tract": first["version"]},
                "rounds": args.rounds, "runs": args.runs, "warmup": args.warmup,
                "texts": [{"file": n, "what": w, "text": t} for n, _, t, w in texts],
                "per_round": rounds, "onnxruntime_load_ms": ref_load, "tokenizers_load_ms": tok_load,
                "peak_rss": rss, "peak_rss_method": rss_method(), "checks": checks,
            }, f, indent=1)
        print(f"\nraw results: {os.path.relpath(path, ROOT)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
