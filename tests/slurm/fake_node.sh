#!/bin/bash
# Run "$@" as if on a machine of its own: a private /dev/shm and TMPDIR. The test cluster's fake
# Slurm nodes share one host, and mosaicml-streaming names its shared memory per host (a real node
# has its own /dev/shm). Used as `megadlm submit --launcher-wrapper tests/slurm/fake_node.sh`.
set -eu
TMPDIR=$(mktemp -d "${TMPDIR:-/tmp}/megadlm-fake-node.XXXXXX")
export TMPDIR
exec unshare --mount --propagation private -- bash -c 'mount -t tmpfs -o size=2g tmpfs /dev/shm && exec "$@"' bash "$@"
