"""Held-out text as an lm-eval perplexity task (loglikelihood_rolling: bits per byte).

The first `docs` consecutive chunks of `nbytes` UTF-8 bytes of a text become one document each.
With chunks no longer than the model's sequence length every document is one window, so AR and MDM
models are scored on exactly the same bytes with no context carried between documents, the way
megadlm's validation loss is computed: AR by its exact NLL, MDM by its left-to-right chain rule
(also exact) or its MC-ELBO, which puts the two families on equal terms.
"""
from __future__ import annotations

import json
from pathlib import Path

from megadlm.errors import UserError

TASK_YAML = """# Perplexity over {docs} consecutive {nbytes}-byte chunks of {source} \
(made by megadlm.evaluation.text_task).
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


def write_text_task(text: str, name: str, docs: int, nbytes: int, out_dir: str | Path, source: str,
                    jsonl_path: str | None = None) -> Path:
    """Write NAME.jsonl and NAME.yaml into `out_dir` (for `--include-path out_dir`); returns the YAML.
    lm-eval opens the JSONL by the path in the YAML, relative to the working directory: `jsonl_path`
    says how to write it (default: absolute)."""
    if docs < 1 or nbytes < 4:  # a chunk must hold any UTF-8 character (up to 4 bytes)
        raise UserError(f"a text task needs --docs >= 1 and --bytes >= 4 (got {docs} and {nbytes})")
    pieces = chunks(text, nbytes, docs)
    if len(pieces) < docs:
        raise UserError(f"{source} holds only {len(pieces)} chunks of {nbytes} bytes; "
                        f"ask for fewer documents")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / f"{name}.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in pieces))
    yaml_path = out / f"{name}.yaml"
    yaml_path.write_text(TASK_YAML.format(docs=docs, nbytes=nbytes, source=source, name=name,
                                          jsonl=jsonl_path or str(jsonl.resolve())))
    return yaml_path
