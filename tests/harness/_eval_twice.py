"""Run by torchrun in tests/harness/test_harness.py: `pytrain eval ARGS... --out OUT_SHARDED`, then the same with
`--no-shard --out OUT_COPIES`, in the same processes and process group (one launch, one import of torch and
the harness)."""

import sys

from pytrain.cli import main
from pytrain.train.distributed import init_distributed, shutdown

sharded, copies, *args = sys.argv[1:]
init_distributed("cpu")
try:
    for out, extra in ((sharded, []), (copies, ["--no-shard"])):
        status = main(["eval", *args, "--out", out, *extra])
        if status:
            sys.exit(status)
finally:
    shutdown()
