"""Human-readable views of a result: the per-chunk table of ``--explain``."""

from __future__ import annotations


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _tok(text: str | None) -> str:
    return repr(text)[1:-1].replace("|", "\\|") if text is not None else "?"


def explain(result, context: str | None = None, opening_words: int = 30) -> str:
    """The chunk table of ``oprm ask --explain``: per chunk its first-token entropy, IDK flag and top tokens, and
    with look-ahead selection its answer and support; then the chosen chunk's opening words and the costs."""
    lookahead = any(c.lookahead is not None for c in result.chunks)
    rows = []
    for c in result.chunks:
        top = ", ".join(f"{_tok(t)} {p:.2f}" for _, t, p in c.top_tokens[:3])
        entropy = "not run" if c.entropy is None else f"{c.entropy:.3f}"  # support bound below the support found
        row = [c.index, f"{c.token_start}-{c.token_end}", entropy, "yes" if c.is_idk else "", top]
        if lookahead:
            row += [_tok(c.lookahead) if c.lookahead is not None else "", "" if c.support is None else
                    f"{c.support:.2f}"]
        rows.append(row + ["" if c.score is None else f"{c.score:.3f}", "◀" if c.index in result.chosen else ""])
    headers = ["chunk", "tokens", "entropy (nats)", "IDK", "top first tokens"]
    headers += ["look-ahead answer", "support"] if lookahead else []
    extra = f"  extra tokens: {result.extra_tokens}" if result.extra_tokens else ""
    skipped = sum(c.entropy is None for c in result.chunks)
    extra += f"  not run: {skipped} (support bound below the support found)" if skipped else ""
    out = [f"mode: {result.mode}  chunks: {len(result.chunks)}  chunk size: {result.chunk_size}  "
           f"chunking: {result.chunking}{extra}  selection: {result.selection}",
           markdown_table(headers + ["score", "chosen"], rows)]
    if result.idk_fallback_used:
        out.append("every chunk answered IDK: fallback used")
    for span in result.chosen_spans:
        if context is not None and span["char_start"] is not None:
            words = context[span["char_start"]:span["char_end"]].split()
            opening = " ".join(words[:opening_words]) + (" …" if len(words) > opening_words else "")
            out.append(f"chunk {span['chunk']} opens: {opening}")
    t = result.timings
    out.append(f"tokens processed: {result.tokens_processed} (look-ahead {result.lookahead_tokens})  time: prefill "
               f"{t.get('prefill', 0):.2f}s, selection {t.get('selection', 0):.2f}s, look-ahead "
               f"{t.get('lookahead', 0):.2f}s, decode {t.get('decode', 0):.2f}s")
    out.append(f"answer: {result.text}")
    return "\n\n".join(out)
