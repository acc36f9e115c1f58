"""An independent BERT sentence-embedding reference for quantize/tests/import_hf.rs.

Usage: python bert_reference.py CHECKPOINT_DIR [mean|cls] < sentences.json > reference.json

Reads the Hugging Face checkpoint directly (model.safetensors, config.json, tokenizer.json),
tokenizes each sentence with a WordPiece written here from BERT's published algorithm (basic
tokenizer: clean, CJK spacing, lower-case, strip accents, split on whitespace and punctuation;
then greedy longest-match pieces with "##"), runs the encoder forward in NumPy (float64, exact
erf GELU) and pools by mean over the tokens (or takes the CLS token's state), L2-normalized: what
sentence-transformers computes for all-MiniLM-L6-v2. Nothing here comes from llama.cpp or from the Rust converter under test.

Prints {"ids": [[...]...], "vectors": [[...]...]}.
"""
import json
import math
import struct
import sys
import unicodedata

import numpy as np


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    types = {"F32": np.float32, "F16": np.float16, "BF16": None, "I64": np.int64}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = data[start:end]
        if info["dtype"] == "BF16":
            a = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            a = a.view(np.float32)
        else:
            a = np.frombuffer(raw, dtype=types[info["dtype"]])
        out[name] = a.reshape(info["shape"]).astype(np.float64)
    return out


def is_punct(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def is_cjk(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def basic_tokens(text, lowercase, strip_accents):
    cleaned = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD:
            continue
        if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
            cleaned.append(" ")
            continue
        if unicodedata.category(ch) in ("Cc", "Cf"):
            continue
        if is_cjk(cp):
            cleaned.append(f" {ch} ")
        else:
            cleaned.append(ch)
    text = "".join(cleaned)
    if lowercase:
        text = text.lower()
    if strip_accents:
        text = "".join(c for c in unicodedata.normalize("NFD", text)
                       if unicodedata.category(c) != "Mn")
    words = []
    for word in text.split():
        cur = ""
        for ch in word:
            if is_punct(ch):
                if cur:
                    words.append(cur)
                    cur = ""
                words.append(ch)
            else:
                cur += ch
        if cur:
            words.append(cur)
    return words


def wordpiece(word, vocab, unk, prefix, max_chars):
    if len(word) > max_chars:
        return [unk]
    pieces = []
    start = 0
    while start < len(word):
        end = len(word)
        found = None
        while start < end:
            sub = word[start:end]
            if start > 0:
                sub = prefix + sub
            if sub in vocab:
                found = vocab[sub]
                break
            end -= 1
        if found is None:
            return [unk]
        pieces.append(found)
        start = end
    return pieces


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


ERF = np.vectorize(math.erf)


def gelu(x):
    return 0.5 * x * (1.0 + ERF(x / math.sqrt(2.0)))


def forward(t, cfg, ids, pooling):
    p = "bert." if "bert.embeddings.word_embeddings.weight" in t else ""
    eps = cfg.get("layer_norm_eps", 1e-12)
    n = len(ids)
    x = (t[p + "embeddings.word_embeddings.weight"][ids]
         + t[p + "embeddings.position_embeddings.weight"][:n]
         + t[p + "embeddings.token_type_embeddings.weight"][0])
    x = layer_norm(x, t[p + "embeddings.LayerNorm.weight"], t[p + "embeddings.LayerNorm.bias"], eps)
    heads = cfg["num_attention_heads"]
    d = cfg["hidden_size"] // heads
    for i in range(cfg["num_hidden_layers"]):
        L = f"{p}encoder.layer.{i}."

        def lin(name, v):
            return v @ t[L + name + ".weight"].T + t[L + name + ".bias"]

        q = lin("attention.self.query", x).reshape(n, heads, d).transpose(1, 0, 2)
        k = lin("attention.self.key", x).reshape(n, heads, d).transpose(1, 0, 2)
        v = lin("attention.self.value", x).reshape(n, heads, d).transpose(1, 0, 2)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(n, heads * d)
        x = layer_norm(lin("attention.output.dense", ctx) + x,
                       t[L + "attention.output.LayerNorm.weight"],
                       t[L + "attention.output.LayerNorm.bias"], eps)
        h = gelu(lin("intermediate.dense", x))
        x = layer_norm(lin("output.dense", h) + x, t[L + "output.LayerNorm.weight"],
                       t[L + "output.LayerNorm.bias"], eps)
    v = x.mean(0) if pooling == "mean" else x[0]
    return v / np.linalg.norm(v)


def main():
    ckpt = sys.argv[1]
    pooling = sys.argv[2] if len(sys.argv) > 2 else "mean"
    assert pooling in ("mean", "cls"), pooling
    sentences = json.load(sys.stdin)
    cfg = json.load(open(f"{ckpt}/config.json"))
    tok = json.load(open(f"{ckpt}/tokenizer.json"))
    model = tok["model"]
    vocab = model["vocab"]
    norm = tok["normalizer"]
    lowercase = norm.get("lowercase", True)
    strip = norm.get("strip_accents")
    strip = lowercase if strip is None else strip
    unk = vocab[model["unk_token"]]
    prefix = model.get("continuing_subword_prefix", "##")
    max_chars = model.get("max_input_chars_per_word", 100)
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tensors = load_safetensors(f"{ckpt}/model.safetensors")
    out = {"ids": [], "vectors": []}
    for s in sentences:
        ids = [cls]
        for w in basic_tokens(s, lowercase, strip):
            ids += wordpiece(w, vocab, unk, prefix, max_chars)
        ids.append(sep)
        out["ids"].append(ids)
        out["vectors"].append(forward(tensors, cfg, ids, pooling).tolist())
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
