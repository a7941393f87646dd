#!/usr/bin/env python
"""`megadlm eval` requests per second for an MDM at 1 and 2 ranks, in one run.

The task is held-out text turned into a rolling-perplexity task (--docs chunks of --bytes bytes, one
request each), scored by the MC-ELBO with --mc-num samples. Rounds alternate `--nproc 1` and
`--nproc 2` (and one rank held to one thread, for how sharding scales per core) so machine load hits
all alike; each timing is the whole command (start-up, model load, lm-eval's split and gather
included), as a user waits for it. Both score every request the same;
their bits/byte differ only by the order in which rank 0 sums the gathered documents (~1e-16).

Prints one JSON line: requests_per_s_1rank, requests_per_s_2rank, rank2_speedup (medians over
rounds; whole commands), the same for lm-eval's scoring alone (scoring_*: requests over results.json's
evaluation_seconds), bits_per_byte and its relative difference between the two, and the settings.

    python tools/bench_eval.py RUN_OR_CHECKPOINT_OR_HF_DIR --text held_out.txt
    python tools/bench_eval.py RUN --docs 16 --bytes 24 --mc-num 8 --rounds 1 --skip-one-thread   # smoke
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

def megadlm(*args: str, threads: int | None = None) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("OMP_NUM_THREADS", None)  # torch's default (every core); `--nproc N` gives each rank one
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run([sys.executable, "-m", "megadlm", *args], cwd=REPO, env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"megadlm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="an MDM checkpoint, run directory or HF export")
    parser.add_argument("--text", help="held-out UTF-8 text (default: Python's pydoc topics)")
    parser.add_argument("--docs", type=int, default=256, help="requests (default 256)")
    parser.add_argument("--bytes", type=int, default=128, dest="nbytes",
                        help="bytes per request (default 128)")
    parser.add_argument("--mc-num", type=int, default=128, help="ELBO samples per request (default 128)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per side (default 2)")
    parser.add_argument("--skip-one-thread", action="store_true",
                        help="leave out the one-thread side (smoke runs: the tests use it)")
    args = parser.parse_args(argv)
    from megadlm.data.corpus import write_pydoc_corpus
    from megadlm.evaluation.text_task import write_text_task

    docs, nbytes, mc_num, rounds = args.docs, args.nbytes, args.mc_num, args.rounds
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        root = Path(tmp)
        if args.text:
            text = Path(args.text).read_text(encoding="utf-8")
        else:
            text = "\n".join(p.read_text(encoding="utf-8")
                             for p in sorted(write_pydoc_corpus(root / "pydoc").glob("*.txt")))
        write_text_task(text, "bench_text", docs, nbytes, root / "tasks", source=args.text or "pydoc topics")
        model = args.model
        # (side, ranks, threads per process: None = torch's default, all cores; ranks get 1 each)
        sides = [("1", 1, None), ("2", 2, None), *([] if args.skip_one_thread else [("1_one_thread", 1, 1)])]
        rates: dict[str, list[float]] = {side: [] for side, _, _ in sides}
        scoring: dict[str, list[float]] = {side: [] for side, _, _ in sides}
        scores: dict[str, float] = {}
        for r in range(rounds):
            for side, nproc, threads in sides:
                out = root / f"eval_{side}_{r}"
                start = time.perf_counter()
                megadlm("eval", model, "--tasks", "bench_text", "--include-path", str(root / "tasks"),
                        "--mc-num", str(mc_num), "--nproc", str(nproc), "--out", str(out), threads=threads)
                rates[side].append(docs / (time.perf_counter() - start))
                record = json.loads((out / "results.json").read_text())
                scores[side] = record["tasks"]["bench_text"]["bits_per_byte,none"]
                scoring[side].append(docs / record["evaluation_seconds"])
                print(f"round {r + 1}: {side:>12s} {rates[side][-1]:.2f} requests/s "
                      f"({scoring[side][-1]:.2f} while scoring)", file=sys.stderr)
    one, two = statistics.median(rates["1"]), statistics.median(rates["2"])
    score_one, score_two = statistics.median(scoring["1"]), statistics.median(scoring["2"])
    score_one_thread = statistics.median(scoring["1_one_thread"]) if scoring.get("1_one_thread") else None
    result = {"requests_per_s_1rank": round(one, 3), "requests_per_s_2rank": round(two, 3),
              "rank2_speedup": round(two / one, 3),
              # lm-eval's part alone (results.json's evaluation_seconds): no start-up or model loading
              "scoring_requests_per_s_1rank": round(score_one, 3),
              "scoring_requests_per_s_2rank": round(score_two, 3),
              "scoring_rank2_speedup": round(score_two / score_one, 3),
              # 2 ranks of one thread each against 1 rank of one thread: how sharding scales per device
              "scoring_requests_per_s_1rank_one_thread": score_one_thread and round(score_one_thread, 3),
              "scoring_rank2_over_one_thread": score_one_thread and round(score_two / score_one_thread, 3),
              "bits_per_byte": scores["1"],
              # the same per-request scores, summed in another order once gathered on rank 0
              "bits_per_byte_rel_diff": max(abs(v - scores["1"]) for v in scores.values()) / abs(scores["1"]),
              "docs": docs, "bytes_per_doc": nbytes, "mc_num": mc_num, "rounds": rounds,
              "cpus": os.cpu_count()}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
