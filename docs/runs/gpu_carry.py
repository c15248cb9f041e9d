"""Move an encoder to a lent GPU machine and a trained model back, in the pieces its calls allow.

A call to the lent machine carries at most 64 MiB and brings back at most 64 MiB (files of 16 MiB
or less), so neither all-mpnet-base-v2 (438 MB in fp32) nor a trained int8 model (about 150 MB)
fits one call. This script cuts them into pieces and puts them together again; only the Python
standard library and torch/safetensors are needed, so it runs on either side as it is.

Encoder (here -> there): the floating-point weights travel in bf16, the values that bf16 autocast
multiplies with anyway, as two byte planes: the high bytes (sign, exponent, top mantissa bit) xz
compress to about a third, the low bytes travel raw. 438 MB becomes about 150 MB. There they come
back as an fp32 `model.safetensors` beside the encoder's config and tokenizer files; integer
buffers (position ids) travel exactly.

    python docs/runs/gpu_carry.py pack ~/.cache/erc-stream/encoders/mpnet-base /tmp/mpnet-parts --parts 3
    python docs/runs/gpu_carry.py unpack /tmp/erc-gpu/parts /tmp/erc-gpu/mpnet        # there

Model (there -> here): any folder as a tar cut into pieces of at most 15.9 MiB, joined here.

    python docs/runs/gpu_carry.py split FOLDER PIECES_DIR                               # there
    python docs/runs/gpu_carry.py join PIECES_DIR DEST                                  # here

Not part of the package: the tool behind docs/runs/gpu_mpnet.py and session 18's GPU run.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import struct
import sys
import tarfile
from pathlib import Path

MAGIC = b"ERCPACK1"
PIECE_BYTES = int(15.9 * 2**20)
SMALL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def pack(encoder: Path, out: Path, parts: int) -> None:
    import numpy as np
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(encoder / "model.safetensors"))
    index, hi, lo, exact = [], [], [], {}
    for name in sorted(weights):
        t = weights[name]
        if t.is_floating_point():
            planes = t.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint8).reshape(-1, 2)
            lo.append(planes[:, 0].tobytes())
            hi.append(planes[:, 1].tobytes())
            index.append({"name": name, "shape": list(t.shape), "kind": "bf16", "n": t.numel()})
        else:
            exact[name] = t
            index.append({"name": name, "shape": list(t.shape), "kind": "exact"})
    from safetensors.torch import save

    hi_xz = lzma.compress(b"".join(hi), preset=6)
    lo_raw = b"".join(lo)
    exact_blob = save(exact) if exact else b""
    files = {f: (encoder / f).read_bytes().hex() for f in SMALL_FILES if (encoder / f).is_file()}
    header = json.dumps(
        {"index": index, "hi_xz": len(hi_xz), "lo": len(lo_raw), "exact": len(exact_blob), "files": files}
    ).encode()
    blob = MAGIC + struct.pack("<Q", len(header)) + header + hi_xz + lo_raw + exact_blob
    out.mkdir(parents=True, exist_ok=True)
    size = -(-len(blob) // parts)
    for i in range(parts):
        (out / f"encoder.part{i + 1}").write_bytes(blob[i * size : (i + 1) * size])
    digest = hashlib.sha256(blob).hexdigest()
    (out / "encoder.sha256").write_text(digest + "\n")
    print(f"packed {len(weights)} tensors from {encoder}: {len(blob) / 1e6:.1f} MB in {parts} parts of "
          f"{size / 1e6:.1f} MB (high bytes {len(hi_xz) / 1e6:.1f} MB xz, low bytes {len(lo_raw) / 1e6:.1f} MB); "
          f"sha256 {digest[:16]}")  # fmt: skip


def read_header(blob: bytes, source: Path) -> tuple[dict, int]:
    """A pack's header (index, sizes, small files) and where its data starts; the first piece holds it."""
    if not blob.startswith(MAGIC):
        raise SystemExit(f"{source} is not a gpu_carry pack")
    (n,) = struct.unpack("<Q", blob[8:16])
    return json.loads(blob[16 : 16 + n]), 16 + n


def write_small_files(head: dict, dest: Path) -> None:
    """The encoder's config and tokenizer files carried in a pack's header."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, hexdata in head["files"].items():
        (dest / name).write_bytes(bytes.fromhex(hexdata))


def unpack(parts_dir: Path, dest: Path) -> None:
    import numpy as np
    import torch
    from safetensors.torch import load, save_file

    parts = sorted(parts_dir.glob("encoder.part*"), key=lambda p: int(p.name.removeprefix("encoder.part")))
    if not parts:
        raise SystemExit(f"no encoder.part* in {parts_dir}")
    blob = b"".join(p.read_bytes() for p in parts)
    want = (parts_dir / "encoder.sha256").read_text().strip() if (parts_dir / "encoder.sha256").is_file() else None
    got = hashlib.sha256(blob).hexdigest()
    if want is not None and want != got:
        raise SystemExit(f"pieces in {parts_dir} do not add up: sha256 {got[:16]}, expected {want[:16]}")
    head, at = read_header(blob, parts[0])
    hi = np.frombuffer(lzma.decompress(blob[at : at + head["hi_xz"]]), dtype=np.uint8)
    at += head["hi_xz"]
    lo = np.frombuffer(blob[at : at + head["lo"]], dtype=np.uint8)
    at += head["lo"]
    exact = load(blob[at : at + head["exact"]]) if head["exact"] else {}
    both = np.stack([lo, hi], axis=1).reshape(-1).copy()
    values = torch.from_numpy(both.view(np.int16)).view(torch.bfloat16)
    weights, pos = {}, 0
    for item in head["index"]:
        if item["kind"] == "exact":
            weights[item["name"]] = exact[item["name"]]
            continue
        weights[item["name"]] = values[pos : pos + item["n"]].reshape(item["shape"]).float().contiguous()
        pos += item["n"]
    write_small_files(head, dest)
    save_file(weights, str(dest / "model.safetensors"))
    print(f"unpacked {len(weights)} tensors into {dest} (fp32 from bf16; sha256 of the pack {got[:16]})")


def split(folder: Path, out: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(folder, arcname=folder.name)
    blob = buf.getvalue()
    out.mkdir(parents=True, exist_ok=True)
    count = -(-len(blob) // PIECE_BYTES)
    for i in range(count):
        (out / f"piece.{i:03d}").write_bytes(blob[i * PIECE_BYTES : (i + 1) * PIECE_BYTES])
    meta = {"count": count, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(), "name": folder.name}
    (out / "pieces.json").write_text(json.dumps(meta))
    print(f"{folder}: {len(blob) / 1e6:.1f} MB in {count} pieces")


def join(pieces_dir: Path, dest: Path) -> None:
    meta = json.loads((pieces_dir / "pieces.json").read_text())
    missing = [i for i in range(meta["count"]) if not (pieces_dir / f"piece.{i:03d}").is_file()]
    if missing:
        raise SystemExit(f"{pieces_dir}: pieces {missing} missing of {meta['count']}")
    blob = b"".join((pieces_dir / f"piece.{i:03d}").read_bytes() for i in range(meta["count"]))
    if hashlib.sha256(blob).hexdigest() != meta["sha256"]:
        raise SystemExit(f"{pieces_dir}: the pieces do not add up (sha256 differs)")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(dest, filter="data")
    print(f"joined {meta['count']} pieces into {dest / meta['name']}")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("encoder", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--parts", type=int, default=3)
    u = sub.add_parser("unpack")
    u.add_argument("parts_dir", type=Path)
    u.add_argument("dest", type=Path)
    s = sub.add_parser("split")
    s.add_argument("folder", type=Path)
    s.add_argument("out", type=Path)
    j = sub.add_parser("join")
    j.add_argument("pieces_dir", type=Path)
    j.add_argument("dest", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "pack":
        pack(a.encoder, a.out, a.parts)
    elif a.cmd == "unpack":
        unpack(a.parts_dir, a.dest)
    elif a.cmd == "split":
        split(a.folder, a.out)
    else:
        join(a.pieces_dir, a.dest)


if __name__ == "__main__":
    main(sys.argv[1:])
