"""The input pipeline: synthetic batches as before, on-device augmentation, packed == unpacked
batches, decode errors on one line, and real-dataset training runs from a folder and from a pack."""

import math

import pytest
import torch
from realdata_fixtures import make_celeba, make_duke

from aal_k8s.config import load_config
from aal_k8s.data import LoadedDataset, Split, celeba, load_dataset
from aal_k8s.data.pack import build_pack, pack_prefix
from aal_k8s.data.pipeline import InputPipeline, epoch_seed, use_bf16
from aal_k8s.errors import DatasetError
from aal_k8s.planner import plan_stage
from aal_k8s.store import LocalStore
from aal_k8s.train import train_run

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _square_data(n=6, side=16, transform=True) -> LoadedDataset:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=g)
    labels = (torch.rand(n, 3, generator=g) < 0.5).float()
    split = Split(images, labels)
    return LoadedDataset("t", ["a", "b", "c"], {"train": split, "val": split, "test": split},
                         (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), transform=transform)  # fmt: skip


def test_synthetic_batches_are_the_original_preprocessing(tiny_cfg):
    data = load_dataset(tiny_cfg.dataset)
    pipe = InputPipeline(data, [0, 4], torch.device("cpu"), out_size=224, crop=0.5, flip=True)  # ignored: transform=False
    x, y = next(pipe.eval_batches("val", 8))
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    expect = ((data.splits["val"].images[:8].float().div_(255.0) - mean) / std).contiguous(memory_format=torch.channels_last)
    assert torch.equal(x, expect) and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, data.splits["val"].labels[:8][:, [0, 4]])
    order = torch.randperm(len(data.splits["train"]), generator=torch.Generator().manual_seed(3))
    x, y = next(pipe.train_batches(5, torch.Generator().manual_seed(3), epoch=1))
    assert torch.equal(y, data.splits["train"].labels[order[:5]][:, [0, 4]])  # same order as before, no flip


def test_train_batches_are_augmented_deterministically_per_epoch():
    data = _square_data()
    pipe = InputPipeline(data, [0, 1, 2], torch.device("cpu"), out_size=24, crop=0.8, flip=True, seed=7)
    a = [x for x, _ in pipe.train_batches(4, torch.Generator().manual_seed(0), epoch=1)]
    b = [x for x, _ in pipe.train_batches(4, torch.Generator().manual_seed(0), epoch=1)]
    c = [x for x, _ in pipe.train_batches(4, torch.Generator().manual_seed(0), epoch=2)]
    assert a[0].shape == (4, 3, 24, 24) and a[0].dtype == torch.float32
    assert a[0].is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(p, q) for p, q in zip(a, b)) and not torch.equal(a[0], c[0])
    assert epoch_seed(7, 1) != epoch_seed(7, 2) != epoch_seed(8, 2)


def test_flip_without_crop_mirrors_exactly_and_eval_is_the_plain_image():
    data = _square_data(n=16)
    plain = InputPipeline(data, [0], torch.device("cpu"), out_size=16)
    ref = torch.cat([x for x, _ in plain.eval_batches("train", 16)])
    pipe = InputPipeline(data, [0], torch.device("cpu"), out_size=16, crop=1.0, flip=True)
    gen = torch.Generator().manual_seed(1)
    order = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    x, _ = next(pipe.train_batches(16, gen, epoch=1))
    flipped = 0
    for i, k in enumerate(order.tolist()):
        same = torch.allclose(x[i], ref[k], atol=1e-5)
        mirror = torch.allclose(x[i], ref[k].flip(-1), atol=1e-5)
        assert same or mirror
        flipped += mirror and not same
    assert 3 <= flipped <= 13
    mean, std = torch.tensor(data.mean).view(3, 1, 1), torch.tensor(data.std).view(3, 1, 1)
    assert torch.allclose(ref[0], (data.splits["train"].images[0] / 255.0 - mean) / std, atol=1e-5)


def test_bf16_batches_and_precision_choice():
    pipe = InputPipeline(_square_data(), [0], torch.device("cpu"), out_size=8, bf16=True)
    x, _ = next(pipe.eval_batches("val", 4))
    assert x.dtype == torch.bfloat16 and x.shape == (4, 3, 8, 8)
    assert use_bf16("auto", torch.device("cuda")) and not use_bf16("auto", torch.device("cpu"))
    assert use_bf16("bf16", torch.device("cpu")) and not use_bf16("fp32", torch.device("cuda"))


@pytest.fixture
def celeba_both(tmp_path):
    """The same miniature CelebA unpacked and packed."""
    root = tmp_path / "celeba"
    make_celeba(root, counts=(8, 4, 4))
    store = LocalStore(str(tmp_path / "store"))
    build_pack(celeba, str(root), store, pack_prefix("celeba"), strict=False, shard_size=3, workers=0)
    over = [f"dataset.root={root}", "dataset.strict_counts=false", f"dataset.cache_dir={tmp_path / 'cache'}"]
    return root, store, over


@pytest.mark.parametrize("workers", [0, 2])
def test_folder_batches_equal_packed_batches(celeba_both, workers):
    root, store, over = celeba_both
    cfg = load_config(dataset="celeba", overrides=over).dataset
    folder = load_dataset(load_config(dataset="celeba", overrides=[*over, "dataset.pack=none"]).dataset)
    packed = load_dataset(cfg, store=store)
    kw = dict(out_size=40, crop=0.85, flip=True, seed=3)
    pf = InputPipeline(folder, [1, 5, 20], torch.device("cpu"), workers=workers, **kw)
    pp = InputPipeline(packed, [1, 5, 20], torch.device("cpu"), **kw)
    assert "train=files:cpu" in pf.describe() and "train=resident:cpu" in pp.describe()
    for (xf, yf), (xp, yp) in zip(pf.eval_batches("test", 3), pp.eval_batches("test", 3), strict=True):
        assert torch.equal(xf, xp) and torch.equal(yf, yp)
    tf = list(pf.train_batches(3, torch.Generator().manual_seed(5), epoch=2))
    tp = list(pp.train_batches(3, torch.Generator().manual_seed(5), epoch=2))
    assert len(tf) == len(tp) == 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(tf, tp))


@pytest.mark.parametrize("workers", [0, 2])
def test_unreadable_image_in_the_folder_pipeline_is_one_line(celeba_both, workers):
    root, _, over = celeba_both
    (root / "img_align_celeba" / "000002.jpg").write_bytes(b"junk")
    data = load_dataset(load_config(dataset="celeba", overrides=[*over, "dataset.pack=none"]).dataset)
    pipe = InputPipeline(data, [0], torch.device("cpu"), out_size=16, workers=workers)
    with pytest.raises(DatasetError) as e:
        for split in ("train", "val", "test"):
            list(pipe.eval_batches(split, 4))
    assert "000002.jpg: unreadable image" in e.value.message and "\n" not in e.value.message


def test_celeba_training_from_folder_and_from_pack_is_identical(celeba_both, tmp_path):
    root, store, over = celeba_both
    over = [*over, "model.backbone=small_cnn", "model.pretrained=none", "model.image_size=32",
            "train.epochs=2", "train.batch_size=4", "train.heads_impl=reference", "dataset.workers=0"]  # fmt: skip
    cfg = load_config(dataset="celeba", overrides=over)
    spec = plan_stage("pairwise", cfg, attributes=["Big_Lips", "Smiling"])[0]
    from_pack = train_run(spec, load_dataset(cfg.dataset, store=store))
    folder_cfg = load_config(dataset="celeba", overrides=[*over, "dataset.pack=none"])
    from_folder = train_run(spec, load_dataset(folder_cfg.dataset, store=store))
    assert from_pack.metrics()["history"][1]["train_loss"] == from_folder.metrics()["history"][1]["train_loss"]
    assert from_pack.test_acc == from_folder.test_acc
    assert "resident" in from_pack.environment["input"] and "files" in from_folder.environment["input"]


def test_bf16_autocast_trains_on_cpu(celeba_both):
    root, store, over = celeba_both
    over = [*over, "model.backbone=small_cnn", "model.pretrained=none", "model.image_size=32",
            "train.epochs=1", "train.batch_size=4", "train.heads_impl=reference", "train.precision=bf16"]  # fmt: skip
    cfg = load_config(dataset="celeba", overrides=over)
    spec = plan_stage("single", cfg, attributes=["Smiling"])[0]
    r = train_run(spec, load_dataset(cfg.dataset, store=store))
    assert all(math.isfinite(v) for v in r.history[0]["train_loss"].values())
    assert r.environment["input"].endswith("bf16")


@cuda
@pytest.mark.cuda
def test_packed_splits_live_in_gpu_memory_and_batches_are_bf16(celeba_both):
    root, store, over = celeba_both
    data = load_dataset(load_config(dataset="celeba", overrides=over).dataset, store=store)
    dev = torch.device("cuda")
    pipe = InputPipeline(data, [0, 1], dev, out_size=64, crop=0.9, flip=True, bf16=True)
    assert all(s.where.type == "cuda" for s in pipe.sources.values())
    x, y = next(pipe.train_batches(4, torch.Generator().manual_seed(0), epoch=1))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.bfloat16 and x.shape == (4, 3, 64, 64)
    assert x.is_contiguous(memory_format=torch.channels_last)
    cpu = InputPipeline(data, [0, 1], torch.device("cpu"), out_size=64)
    xc, _ = next(cpu.eval_batches("val", 4))
    xg, _ = next(InputPipeline(data, [0, 1], dev, out_size=64).eval_batches("val", 4))
    assert torch.allclose(xg.cpu(), xc, atol=1e-4)


@pytest.mark.parametrize("dataset", ["celeba", "duke"])
def test_predict_preprocesses_real_format_images_exactly_as_evaluation_does(dataset, tmp_path):
    """JPEGs in the datasets' own formats (CelebA 178x218; Duke in varied sizes, resized to 128x256
    when decoded) through the evaluation pipeline and through predict's preprocessing."""
    from aal_k8s.final import input_spec
    from aal_k8s.modelset import preprocess

    root = tmp_path / dataset
    (make_celeba if dataset == "celeba" else make_duke)(root)
    cfg = load_config(dataset=dataset, overrides=[f"dataset.root={root}", "dataset.strict_counts=false",
                                                  "dataset.pack=none"])  # fmt: skip
    data = load_dataset(cfg.dataset)
    assert cfg.model.image_size == 224 and data.splits["test"].size != (224, 224)
    pipe = InputPipeline(data, [0], torch.device("cpu"), out_size=cfg.model.image_size, crop=0.8, flip=True)
    evaluated = torch.cat([x for x, _ in pipe.eval_batches("test", 4)])
    served = preprocess(data.splits["test"].files, {"dataset": dataset, "input": input_spec(cfg)})
    assert served.shape == evaluated.shape and torch.equal(served, evaluated)
