"""Arguments and entry point of `megadlm prepare` (wired into the main CLI elsewhere).

Only argparse is imported at module level so `megadlm --help` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="text/markdown files (one document each), JSONL/JSON (\"text\" field) or "
                             "parquet (\"text\" column) files, text and JSON also compressed (.gz, .zst, "
                             ".bz2, .xz: read streaming), directories searched recursively for them, quoted "
                             "glob patterns ('data/**/*.jsonl.zst') and Hugging Face datasets saved with "
                             "save_to_disk")
    parser.add_argument("--text-field", default="text", metavar="NAME",
                        help="the JSON field / parquet or dataset column holding the text (default text)")
    parser.add_argument("--out", required=True, metavar="DIR|URL",
                        help="output directory (shards + manifest.json), or an object-store prefix "
                             "(s3://bucket/prefix, gs://...; an empty one) to prepare into and upload to, "
                             "for a sweep's data.remote")
    parser.add_argument("--tokenizer", default="bytes", metavar="bytes|PATH",
                        help="'bytes' (built-in byte tokenizer, default) or a HF tokenizer.json / its "
                             "directory")
    parser.add_argument("--train-bpe", type=int, default=None, metavar="VOCAB",
                        help="train a byte-level BPE with this vocabulary size on the train documents")
    parser.add_argument("--seq-len", type=int, default=128, metavar="N",
                        help="tokens per training sequence; samples hold N+1 tokens (default 128)")
    parser.add_argument("--val-fraction", type=float, default=0.0, metavar="F",
                        help="hold out whole documents totalling about this fraction of the text (default 0)")
    parser.add_argument("--val-input", nargs="+", default=[], metavar="PATH",
                        help="files or directories used only for the val split")
    parser.add_argument("--max-tokens", type=int, default=None, metavar="N",
                        help="cap the train token stream at N tokens")
    parser.add_argument("--skip-bad-documents", action="store_true",
                        help="leave out documents that are not valid UTF-8 (a JSONL line, JSON record or "
                             "parquet row; a whole text file) instead of stopping; they are counted in "
                             "manifest.json")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output directory (only once the new one is complete)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="tokenize in N processes of one thread each (default 1: in this process); the "
                             "output is identical for any N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _fmt_split(name: str, split: dict[str, Any]) -> str:
    bpt = split.get("bytes_per_token")
    bpt_s = f", {bpt:.2f} bytes/token" if bpt else ""
    return (f"  {name:5s} {split['samples']:>9,} samples  {split['tokens']:>12,} tokens  "
            f"{split['documents']:>7,} documents{bpt_s}")


def run_prepare(args: argparse.Namespace) -> int:
    """Run `prepare` from parsed arguments and print a summary; DataError propagates to the main CLI."""
    from megadlm.data.prepare import prepare
    from megadlm.data.publish import is_remote, prepare_to_store

    options = dict(inputs=args.input, tokenizer=args.tokenizer, seq_len=args.seq_len,
                   val_fraction=args.val_fraction, val_inputs=args.val_input, max_tokens=args.max_tokens,
                   train_bpe=args.train_bpe, progress=not args.no_progress, overwrite=args.overwrite,
                   skip_bad_documents=args.skip_bad_documents, text_field=args.text_field,
                   workers=args.workers)
    if is_remote(args.out):
        manifest = prepare_to_store(args.out, **options)
    else:
        manifest = prepare(out=args.out, **options)
    tok = manifest["tokenizer"]
    skipped = ""
    if args.skip_bad_documents:  # shown even when 0: the user asked, so tell them how many there were
        skipped = (f", skipped {manifest['skipped_documents']:,} undecodable documents"
                   f"{' (see skipped_details in manifest.json)' if manifest['skipped_documents'] else ''}")
    print(f"wrote {args.out}: seq_len {manifest['seq_len']}, {manifest['dtype']} tokens{skipped}")
    for name, split in manifest["splits"].items():
        print(_fmt_split(name, split))
    if "val" not in manifest["splits"]:
        print("  (no val split: pass --val-fraction or --val-input to hold out text)")
    print(f"  tokenizer {tok['name']} ({tok['kind']}): vocab {manifest['vocab_size']} "
          f"(eos {manifest['eos_id']}, mask {manifest['mask_id']})")
    tokens = sum(split["tokens"] for split in manifest["splits"].values())
    seconds = manifest["prepare_seconds"]
    print(f"  {tokens:,} tokens in {seconds:.1f} s ({tokens / max(seconds, 1e-9):,.0f} tokens/s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (`python -m megadlm.data.cli_prepare`), printing user errors without a
    traceback."""
    import sys

    from megadlm.errors import UserError

    parser = argparse.ArgumentParser(prog="megadlm prepare", description="Tokenize text into MDS shards.")
    add_prepare_arguments(parser)
    try:
        return run_prepare(parser.parse_args(argv))
    except UserError as e:
        print(f"megadlm prepare: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
