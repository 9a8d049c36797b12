"""The input pipeline: dataset splits -> normalised, augmented batches on the training device.

Two sources of uint8 batches feed one on-device transform:

* resident (decoded splits: packs and the synthetic data): the whole split is a uint8 tensor. On
  a GPU it is copied into GPU memory once (every split that fits, train first), and each batch is
  a gather by index there: no JPEG decoding, no worker processes, no host round trip. On a CPU
  the same code gathers from host memory.
* files (an unpacked dataset folder): DataLoader worker processes decode the JPEGs of each batch
  with torchvision (``dataset.workers``), and the uint8 batch is copied to the device.

The transform (``BatchTransform``) runs on the device for a whole batch at once: train batches of
real datasets get a random crop (sides ``dataset.augment.crop`` of the image's) and horizontal flip
in one ``grid_sample`` that also resizes to ``model.image_size``; val/test batches are resized
whole. Then normalisation, channels_last, and bf16 when the run trains under bf16 autocast. The
synthetic data (``LoadedDataset.transform`` False) is only normalised, exactly as it always was.

Randomness: the epoch's order comes from the run's CPU generator (as before); crop/flip draws come
from a generator on the device seeded by (run seed, epoch), so nothing waits on the host and an
epoch's augmentation does not depend on earlier epochs.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterator

import torch
import torch.nn.functional as F

from aal_k8s.data import LoadedDataset, Split

Batch = tuple[torch.Tensor, torch.Tensor]  # (images [B, 3, S, S] channels_last, labels [B, K])

GPU_HEADROOM_BYTES = 8 << 30  # left free for the model when deciding what stays in GPU memory


def use_bf16(precision: str, device: torch.device) -> bool:
    """train.precision: auto = bf16 autocast on CUDA, fp32 elsewhere."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def epoch_seed(seed: int, epoch: int) -> int:
    return int.from_bytes(hashlib.sha256(f"aug:{seed}:{epoch}".encode()).digest()[:8], "little") >> 1


class BatchTransform:
    """uint8 [B, 3, H, W] on the device -> normalised float [B, 3, S, S], channels_last."""

    def __init__(
        self,
        mean,
        std,
        device: torch.device,
        out_size: int | None,
        crop: float = 1.0,
        flip: bool = False,
        transform: bool = True,
        dtype: torch.dtype = torch.float32,
    ):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.device = device
        self.out_size = out_size
        self.crop, self.flip, self.transform = float(crop), bool(flip), transform
        self.dtype = dtype

    def __call__(self, images: torch.Tensor, train: bool, gen: torch.Generator | None = None) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        if not self.transform:  # synthetic data: normalise only
            return self._normalise(images.float())
        b, _, h, w = images.shape
        s = self.out_size or h
        x = images.float()
        if train and (self.crop < 1.0 or self.flip):
            r = torch.rand(b, 3, device=self.device, generator=gen)
            sx = torch.full((b,), self.crop, device=self.device)
            if self.flip:
                sx = torch.where(r[:, 0] < 0.5, -sx, sx)
            theta = torch.zeros(b, 2, 3, device=self.device)
            theta[:, 0, 0] = sx  # output x in [-1, 1] -> input x = sx * x + tx
            theta[:, 1, 1] = self.crop
            theta[:, 0, 2] = (2.0 * r[:, 1] - 1.0) * (1.0 - self.crop)  # the window stays inside
            theta[:, 1, 2] = (2.0 * r[:, 2] - 1.0) * (1.0 - self.crop)
            grid = F.affine_grid(theta, [b, 3, s, s], align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        elif (h, w) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return self._normalise(x)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Float pixels in [0, 255] -> (x / 255 - mean) / std, channels_last. One formula for
        every path (a fused x * scale + shift rounds differently), so evaluation, ``predict`` and
        the synthetic data get bitwise the same inputs from the same pixels."""
        x = (x / 255.0 - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last).to(self.dtype)


def model_inputs(images: torch.Tensor, image_size: int, mean, std, device: torch.device | str = "cpu") -> torch.Tensor:
    """The model input for uint8 images [B, 3, H, W] outside training: resized to ``image_size``
    squared (bilinear, as evaluation does) and normalised. The evaluation of every training run
    and ``aal_k8s.modelset.predict`` both go through ``BatchTransform``, so a model sees the same
    numbers when it is evaluated and when it is used."""
    device = torch.device(device)
    return BatchTransform(mean, std, device, image_size)(images, train=False)


class _Resident:
    """A decoded split; images in GPU memory when ``on_device``, else in host memory."""

    kind = "resident"

    def __init__(self, split: Split, cols: list[int], device: torch.device, on_device: bool):
        self.n = len(split)
        self.device = device
        self.images = split.images.to(device) if on_device else split.images
        self.where = self.images.device
        # labels live beside the images, so one index tensor gathers both
        self.labels = split.labels[:, cols].to(self.where)

    def batches(self, order: torch.Tensor | None, batch_size: int) -> Iterator[Batch]:
        order = order.to(self.where) if order is not None else None  # once per epoch
        for s in range(0, self.n, batch_size):
            idx = slice(s, s + batch_size) if order is None else order[s : s + batch_size]
            yield self.images[idx], self.labels[idx].to(self.device, non_blocking=True)


class _Files:
    """An unpacked split: each batch decoded from its JPEG files by DataLoader worker processes."""

    kind = "files"

    def __init__(self, split: Split, cols: list[int], device: torch.device, workers: int):
        self.n = len(split)
        self.split, self.device = split, device
        self.workers = min(workers, len(os.sched_getaffinity(0)))  # never more than this pod's cores
        self.labels = split.labels[:, cols]
        self.where = torch.device("cpu")

    def batches(self, order: torch.Tensor | None, batch_size: int) -> Iterator[Batch]:
        from aal_k8s.data.common import decoded_batches

        idx = order if order is not None else torch.arange(self.n)
        chunks = [idx[s : s + batch_size] for s in range(0, self.n, batch_size)]
        pin = self.device.type == "cuda"
        stream = decoded_batches(
            self.split.files, self.split.size, True, [c.tolist() for c in chunks], self.workers, pin
        )
        for images, c in zip(stream, chunks):
            yield images, self.labels[c].to(self.device, non_blocking=True)


class InputPipeline:
    """Batches of the train, val and test splits of ``data`` for the heads ``cols`` on ``device``."""

    def __init__(
        self,
        data: LoadedDataset,
        cols: list[int],
        device: torch.device,
        out_size: int | None,
        crop: float = 1.0,
        flip: bool = False,
        bf16: bool = False,
        workers: int = 0,
        seed: int = 0,
        splits: tuple[str, ...] = ("train", "val", "test"),
    ):
        self.device = device
        self.seed = seed
        self.bf16 = bf16
        self.transform = BatchTransform(
            data.mean, data.std, device, out_size if data.transform else None,
            crop=crop, flip=flip, transform=data.transform,
            dtype=torch.bfloat16 if bf16 else torch.float32,
        )  # fmt: skip
        self.sources = {}
        budget = _gpu_budget(device)
        for name in splits:
            split = data.splits[name]
            if split.images is None:
                self.sources[name] = _Files(split, cols, device, workers)
                continue
            nbytes = split.images.numel() * split.images.element_size()
            fits = device.type == "cuda" and nbytes <= budget
            budget -= nbytes if fits else 0
            self.sources[name] = _Resident(split, cols, device, on_device=fits)

    def __len__(self) -> int:
        return self.sources["train"].n

    def size(self, split: str) -> int:
        return self.sources[split].n

    def describe(self) -> str:
        parts = [f"{n}={s.kind}:{s.where.type}" for n, s in self.sources.items()]
        return " ".join(parts) + (" bf16" if self.bf16 else " fp32")

    def train_batches(self, batch_size: int, gen: torch.Generator, epoch: int) -> Iterator[Batch]:
        """One epoch in the order ``torch.randperm(n, generator=gen)``, augmented."""
        src = self.sources["train"]
        order = torch.randperm(src.n, generator=gen)
        aug = torch.Generator(device=self.device)
        aug.manual_seed(epoch_seed(self.seed, epoch))
        for images, labels in src.batches(order, batch_size):
            yield self.transform(images, train=True, gen=aug), labels

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """The whole split in order, resized, never augmented."""
        for images, labels in self.sources[split].batches(None, batch_size):
            yield self.transform(images, train=False), labels


def _gpu_budget(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    return max(0, free - GPU_HEADROOM_BYTES)


def pipeline_for_run(data: LoadedDataset, cols: list[int], cfg, device: torch.device, seed: int) -> InputPipeline:
    """The pipeline a training run uses, from its config (``cfg``: a full ``Config``)."""
    aug = cfg.dataset.augment
    return InputPipeline(
        data, cols, device,
        out_size=cfg.model.image_size,
        crop=aug.crop,
        flip=aug.flip,
        bf16=use_bf16(cfg.train.precision, device),
        workers=cfg.dataset.workers,
        seed=seed,
    )  # fmt: skip
