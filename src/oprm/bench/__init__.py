"""``oprm bench``: time to first token, prefill and decode speed, peak memory and tokens processed, vanilla vs OPRM.

    oprm bench --model tiny-mamba2 --lengths 1024,4096,16384,65536 --modes vanilla,oprm --repeats 3
    oprm bench --model tiny-mamba2 --lengths 1048576 --modes oprm --repeats 1          # streaming to 1M tokens
    oprm bench --model tiny-mamba --lengths 8192 --threads 1,2                          # thread sweep
    oprm bench --model falcon-mamba-7b-2l --device cuda --lengths 32768 --mamba-kernels both

A benchmark, not a test. ``--model`` is a random-weight config (``tiny-mamba``, ``tiny-mamba2``, ``tiny-rwkv``,
``tiny-zamba2``, ``tiny-llama``, ``falcon-mamba-7b-2l``, ...), a shipped model's name, or a transformers model folder /
hub id. The input is random token ids (``|P|`` prefix, ``N`` context, ``|S|`` suffix tokens), so any vocabulary works
and no tokenizer is needed. Engine flags (``--chunk-size``, ``--max-batch-tokens``, ...) are OPRMConfig's, with its
defaults (chunk size 2000, as everywhere else: the bench measures what users run).

Per context length (and thread count) one fresh process times the modes interleaved (vanilla, OPRM, OPRM, vanilla,
...: load drift hits both alike) after one short warm-up call per mode, ``--repeats`` times each; the report gives
medians. Time to first token is taken when the first answer token reaches a streamer (wall and process CPU time).
Peak memory comes from one more call per mode, each in its own fresh process, so peaks never leak between cells:
RSS after loading and the RSS high-water mark (CUDA peak on a GPU).

Outputs (``--output-path``): ``bench.json`` (every run), ``bench.md`` (the median table), ``bench_time.png`` and
``bench_memory.png`` (time to first token and peak memory vs context length, log-log).

Modules: ``specs`` (models and inputs), ``cells`` (one cell, in its own process), ``tables`` (medians, tables, plots),
``driver`` (flags, plan, processes).
"""

from .cells import run_memory, run_timing
from .driver import add_parser, meta, parse_ints, plan, run_bench, spawn_cell
from .specs import RANDOM, load_model, make_input
from .tables import bench_table, compact_table, compare, rows_from_cells, summarize, write_outputs

__all__ = ["add_parser", "plan", "run_bench", "spawn_cell", "meta", "parse_ints", "run_timing", "run_memory",
           "RANDOM", "load_model", "make_input", "summarize", "compare", "rows_from_cells", "bench_table",
           "compact_table", "write_outputs"]
