"""What the real-dataset loaders (CelebA, Duke) and the packs share: image decoding and input checks
that fail with one line naming the file. Leaf helpers: the flow that finds a pack or the source
folder is ``aal_k8s.data.sources``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from aal_k8s.data import Split
from aal_k8s.errors import DatasetError


def fmt_count(n: int) -> str:
    return f"{n:,}"


def _decoder():
    try:
        from torchvision.io import ImageReadMode, decode_image as tv_decode
    except ImportError:  # a torchvision without image decoding: PIL (packs record the decoder)
        return None
    return lambda data: tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def _pil_decode(data: bytes) -> torch.Tensor:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def decoder_name() -> str:
    import torchvision

    return f"torchvision {torchvision.__version__}" if _decoder() is not None else "PIL"


def decode_image(path: str, size: tuple[int, int], resize: bool) -> torch.Tensor:
    """uint8 [3, H, W] RGB of the image file at ``path`` with ``(H, W) == size``.

    The one decoder of the project (torchvision's libjpeg-turbo/libpng): packs, the image-folder
    pipeline, ``predict`` and the tests all decode through it, so packed and unpacked pixels are
    identical. ``resize`` resizes other sizes (bilinear, antialiased); otherwise a different size
    is an error.
    """
    img = read_image(path)
    h, w = int(img.shape[1]), int(img.shape[2])
    if (h, w) != tuple(size):
        if not resize:
            raise DatasetError(
                f"{path}: image is {w}x{h} pixels (width x height), expected {size[1]}x{size[0]}"
            )
        img = resize_decoded(img, size)
    return img.contiguous()


def resize_decoded(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The resize of decoding (datasets whose images vary in size): bilinear, antialiased."""
    from torchvision.transforms.v2.functional import resize as tv_resize

    return tv_resize(img, list(size), antialias=True)


def read_image(path: str, any_format: bool = False) -> torch.Tensor:
    """uint8 [3, H, W] RGB of the image file at ``path``, at its own size, decoded as
    ``decode_image`` does. ``any_format``: formats the decoder does not read (BMP, TIFF, PPM...,
    all lossless) are read with PIL, which gives the same pixels."""
    decode = _decoder() or _pil_decode
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing image file") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 deprecates its image decoders in favour of TorchCodec; they work
            warnings.simplefilter("ignore", DeprecationWarning)
            img = decode(data)
        # an animated GIF decodes to [frames, 3, H, W]: its first frame, as PIL reads it
        return img[0] if img.dim() == 4 else img
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        if any_format and decode is not _pil_decode:
            try:
                return _pil_decode(data)
            except Exception:
                reason = "neither torchvision nor PIL reads it"
        raise DatasetError(f"{path}: unreadable image ({reason})") from None


def require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise DatasetError(f"{path}: missing {what} folder")


def require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: missing {what}")


def check_count(where: str, what: str, got: int, expected: int, strict: bool) -> None:
    """With ``strict`` (dataset.strict_counts), a count different from the official one is an error."""
    if strict and got != expected:
        raise DatasetError(
            f"{where}: {fmt_count(got)} {what}, expected {fmt_count(expected)} "
            "(set dataset.strict_counts=false to use a subset)"
        )


def preview(line: str, n: int = 60) -> str:
    line = line.strip()
    return repr(line if len(line) <= n else line[:n] + "...")


def images_in(folder: str, suffixes=(".jpg", ".jpeg", ".png")) -> list[str]:
    """Sorted image file names directly inside ``folder``."""
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(suffixes) and not f.startswith("."))


@dataclass
class Part:
    """One official split, as read from the source folder or a pack (same order either way)."""

    names: list[str]  # image paths relative to the dataset root, in pack order
    labels: np.ndarray  # uint8 [N, M], 0/1
    images: torch.Tensor | None = None  # uint8 [N, 3, H, W] (from a pack)
    root: str | None = None  # the source folder (unpacked: images decoded from root/name)

    def __len__(self) -> int:
        return len(self.names)

    def split(self, size: tuple[int, int], idx: np.ndarray | None = None) -> Split:
        """The ``Split`` of rows ``idx`` (all when None), decoded or as files."""
        labels = self.labels if idx is None else self.labels[idx]
        y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))
        if self.images is not None:
            images = self.images if idx is None else self.images[torch.from_numpy(np.asarray(idx, dtype=np.int64))]
            return Split(images, y, size=size)
        names = self.names if idx is None else [self.names[i] for i in idx]
        return Split(None, y, files=[os.path.join(self.root, n) for n in names], size=size)


#: ImageNet statistics: the backbone is ImageNet-pretrained.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DecodedFiles(torch.utils.data.Dataset):
    """``decode_image`` of each file, for DataLoader workers. Item ``i`` is ``(image, "")`` or
    ``(None, message)``: a decode error comes back as a value, so the main process raises it as
    a one-line ``DatasetError`` (an exception raised inside a worker would be re-wrapped with the
    worker's traceback)."""

    def __init__(self, files: list[str], size: tuple[int, int], resize: bool):
        self.files, self.size, self.resize = files, tuple(size), resize

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return decode_image(self.files[i], self.size, self.resize), ""
        except DatasetError as e:
            return None, e.message


def collate_decoded(items) -> torch.Tensor | str:
    """Stack a batch of ``DecodedFiles`` items; the first error message instead when one failed."""
    for img, err in items:
        if err:
            return err
    return torch.stack([img for img, _ in items])


def decoded_batches(files: list[str], size, resize: bool, batches, workers: int, pin: bool = False):
    """uint8 [B, 3, H, W] batches of ``files`` for each list of indices in ``batches`` (in order),
    decoded by ``workers`` DataLoader processes (0 = in this process)."""
    loader = torch.utils.data.DataLoader(
        DecodedFiles(files, size, resize),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate_decoded,
        pin_memory=pin,
        prefetch_factor=4 if workers else None,
    )
    for batch in loader:
        if isinstance(batch, str):
            raise DatasetError(batch)
        yield batch
