"""`erc-train fit --nproc-per-node N`: start the same command under torchrun on this node.

The launcher is torchrun itself (``python -m torch.distributed.run``), standalone rendezvous on
this host: it starts N worker processes, each running ``python -m trainer fit <the same
arguments>`` with ``RANK``/``WORLD_SIZE``/... set, and if one of them fails it stops the others
and exits non-zero. This process *becomes* torchrun (``exec``), so signals such as SIGTERM
reach torchrun's agent directly and its exit status is the command's exit status.

For several nodes, run torchrun yourself with a shared rendezvous (README, "Training on
several processes or nodes").
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence

__all__ = ["NPROC_OPTION", "exec_torchrun", "strip_nproc", "torchrun_command"]

NPROC_OPTION = "--nproc-per-node"


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc-per-node N`` / ``--nproc-per-node=N`` (the workers must not relaunch)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == NPROC_OPTION:
            skip = True
        elif not arg.startswith(NPROC_OPTION + "="):
            out.append(arg)
    return out


def torchrun_command(nproc_per_node: int, argv: Sequence[str]) -> list[str]:
    """The torchrun command line that runs ``erc-train <argv>`` in ``nproc_per_node`` processes."""
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be >= 1, got {nproc_per_node!r}")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc_per_node}",
        "-m",
        "trainer",
        *strip_nproc(argv),
    ]


def exec_torchrun(nproc_per_node: int, argv: Sequence[str]) -> None:  # pragma: no cover - replaces the process
    """Replace this process by torchrun running ``erc-train <argv>`` in ``nproc_per_node`` processes."""
    cmd = torchrun_command(nproc_per_node, argv)
    print("launching: " + shlex.join(cmd), file=sys.stderr, flush=True)
    sys.stdout.flush()
    os.execv(cmd[0], cmd)
