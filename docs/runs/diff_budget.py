"""What a stop's submission weighs against the workplace's size limits, before the stop is made.

The limits (the environment's README): the diffs of all the commits a stop submits, added up as
text, at most 256 MiB, a file added in one commit and removed in a later one counting twice; and
those commits packed as git sends them, at most 512 MiB. A binary file is counted here the way
`git show --binary` writes it (base85 of the deflated bytes; a change carries the old bytes as well
as the new, a deletion the old ones), the larger of the plausible readings: under it session 18's
landed submission (one new 150 MB model) came to 175 MiB, and removing that model again to 179 MiB.

    python docs/runs/diff_budget.py BASE              # BASE: what the last landed stop left on main
    python docs/runs/diff_budget.py BASE --worktree   # and what is not committed yet, as one more commit

It exits 1 when a limit would be passed. Not part of the package: a maintainer's tool for the
model store in git (models/RETIRING says why a replaced model leaves in a later stop).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

MIB = 1 << 20
DIFF_LIMIT_MIB = 256
PACK_LIMIT_MIB = 512


def _git(repo: Path, *args: str, stdin: bytes | None = None) -> bytes:
    proc = subprocess.run(["git", "-C", str(repo), *args], input=stdin, capture_output=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"git {' '.join(args)} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def commit_diffs(repo: Path, base: str) -> list[tuple[str, str, int]]:
    """(short sha, subject, bytes of its binary diff) for each commit in base..HEAD, oldest first."""
    shas = _git(repo, "rev-list", "--reverse", f"{base}..HEAD").decode().split()
    rows = []
    for sha in shas:
        subject = _git(repo, "log", "-1", "--format=%s", sha).decode().strip()
        size = len(_git(repo, "show", "--binary", "--no-color", "--format=", sha))
        rows.append((sha[:7], subject, size))
    return rows


def worktree_diff(repo: Path) -> int:
    """Bytes of what is staged plus what is changed and not staged (untracked files not included)."""
    return len(_git(repo, "diff", "--binary", "--no-color", "--cached")) + len(
        _git(repo, "diff", "--binary", "--no-color")
    )


def pack_size(repo: Path, base: str) -> int:
    """Bytes of the pack git would send for base..HEAD (thin, against base)."""
    return len(_git(repo, "pack-objects", "--revs", "--thin", "--stdout", "-q", stdin=f"HEAD\n^{base}\n".encode()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="the commit the last landed stop left on main")
    ap.add_argument("--repo", type=Path, default=Path.cwd())
    ap.add_argument("--worktree", action="store_true", help="count uncommitted changes as one more commit")
    ap.add_argument("--no-pack", action="store_true", help="skip the pack size (it compresses every new blob)")
    ap.add_argument("--diff-limit-mib", type=float, default=DIFF_LIMIT_MIB)
    ap.add_argument("--pack-limit-mib", type=float, default=PACK_LIMIT_MIB)
    args = ap.parse_args(argv)
    _git(args.repo, "rev-parse", "--verify", f"{args.base}^{{commit}}")

    rows = commit_diffs(args.repo, args.base)
    if args.worktree:
        rows.append(("-------", "(not committed)", worktree_diff(args.repo)))
    total = sum(size for _, _, size in rows)
    for sha, subject, size in rows:
        print(f"{sha}  {size / MIB:9.2f} MiB  {subject[:80]}")
    over = total / MIB > args.diff_limit_mib
    flag = "  OVER" if over else ""
    print(f"diffs: {total / MIB:.2f} MiB of {args.diff_limit_mib:g} MiB ({len(rows)} commits){flag}")
    if not args.no_pack:
        pack = pack_size(args.repo, args.base)
        pack_over = pack / MIB > args.pack_limit_mib
        note = " (committed only)" if args.worktree else ""
        print(f"pack: {pack / MIB:.2f} MiB of {args.pack_limit_mib:g} MiB{note}" + ("  OVER" if pack_over else ""))
        over = over or pack_over
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
