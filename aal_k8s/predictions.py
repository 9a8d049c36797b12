"""Per-image correctness of a run's heads, stored compactly beside its weights.

Every run commits ``predictions.safetensors``: for each evaluated split (val at the best epoch,
test with the best weights) and each head, one bit per image, set when the head's decision
(sigmoid > 0.5) equals the label, images in the split's fixed order. Bits are packed (numpy
``packbits``, big-endian bit order): CelebA's 19,867 validation images take 2.5 KB per head.
Correctness rather than decisions, so the paired tests of reduce (McNemar, bootstrap over images)
need only the store, not the dataset.
"""

from __future__ import annotations

import numpy as np

ARTIFACT = "predictions.safetensors"
FORMAT = "correct-packbits-v1"


def pack(correct: dict[str, np.ndarray], heads: list[str]) -> bytes:
    """``correct[split]``: bool array [images, heads] -> the artifact's bytes."""
    from safetensors.numpy import save

    tensors, meta = {}, {"format": FORMAT, "heads": ",".join(heads)}
    for split, arr in correct.items():
        arr = np.asarray(arr, dtype=bool)
        if arr.ndim != 2 or arr.shape[1] != len(heads):
            raise ValueError(f"{split}: expected [images, {len(heads)}] correctness, got shape {arr.shape}")
        meta[f"images.{split}"] = str(arr.shape[0])
        for j, head in enumerate(heads):
            tensors[f"{split}/{head}"] = np.packbits(arr[:, j])
    return _canonical(save(tensors, metadata=meta))


def unpack(data: bytes) -> dict[str, dict[str, np.ndarray]]:
    """The artifact's bytes -> ``[split][head]`` bool array over the split's images."""
    from safetensors.numpy import load

    meta = _metadata(data)
    if meta.get("format") != FORMAT:
        raise ValueError(f"unknown predictions format {meta.get('format')!r} (expected {FORMAT})")
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, packed in load(data).items():
        split, head = name.split("/", 1)
        n = int(meta[f"images.{split}"])
        out.setdefault(split, {})[head] = np.unpackbits(packed, count=n).astype(bool)
    return out


def _canonical(data: bytes) -> bytes:
    """``data`` with its header's keys sorted: safetensors keeps ``__metadata__`` in a Rust hash
    map whose order changes from call to call, so the same predictions gave different bytes (and
    checksums) from one run to the next. The tensors' offsets are relative to the end of the header,
    so re-serialising it (padded with spaces to 8 bytes, as safetensors does) moves no tensor."""
    import json

    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data[8 + n :]


def _metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's ``__metadata__`` (8-byte little-endian length, then JSON)."""
    import json

    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]).get("__metadata__") or {}
