"""Shared backbone + one linear head per attribute (rows of one weight matrix).

The heads are kept as a single ``[K, D]`` weight and ``[K]`` bias so the fused GRL+BCE operator
(``aal_k8s.heads``) sees them as one matrix; row k is attribute ``heads[k]``'s linear classifier.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from aal_k8s.errors import AALError

RESNET18_IMAGENET_FILE = "resnet18-f37072fd.pth"  # torchvision's ResNet18_Weights.IMAGENET1K_V1


class SmallCNN(nn.Module):
    """Four conv blocks and global pooling: a few seconds per epoch on a CPU for 32x32 inputs."""

    def __init__(self, width: int = 16):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(zip(chans[:-1], chans[1:])):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            if i < len(chans) - 2:
                layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.out_dim = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))


def _resnet18(pretrained: str) -> nn.Module:
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    if pretrained == "imagenet":
        path = os.path.join(torch.hub.get_dir(), "checkpoints", RESNET18_IMAGENET_FILE)
        if not os.path.isfile(path):
            try:
                weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
                net.load_state_dict(weights.get_state_dict(progress=False))
            except Exception:
                raise AALError(
                    f"model.pretrained: ImageNet weights not found at {path} and could not be "
                    "downloaded; copy the file there, give a path, or set model.pretrained=none"
                ) from None
        else:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    elif pretrained != "none":
        try:
            state = torch.load(pretrained, map_location="cpu", weights_only=True)
            net.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False)
        except Exception as e:
            raise AALError(f"model.pretrained: cannot load {pretrained!r}: {e}") from None
    out_dim = net.fc.in_features
    net.fc = nn.Identity()
    net.out_dim = out_dim
    return net


def build_backbone(backbone: str, pretrained: str) -> nn.Module:
    if backbone == "small_cnn":
        return SmallCNN()
    if backbone == "resnet18":
        return _resnet18(pretrained)
    raise AALError(f"model.backbone: unknown backbone {backbone!r}")


def hidden_stack(d: int, layers: int) -> nn.Sequential:
    """``layers`` x (Linear(d, d) + ReLU): the representation the shared ablation trains on top
    of a frozen CNN (the paper's "two more hidden layers")."""
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(d, d), nn.ReLU()]
    return nn.Sequential(*mods)


class AttributeNet(nn.Module):
    """``features = hidden(backbone(x))`` (no hidden layers unless asked);
    ``logits[:, k] = features @ head_weight[k] + head_bias[k]``."""

    def __init__(self, backbone: str, pretrained: str, heads: list[str], hidden_layers: int = 0):
        super().__init__()
        self.heads = list(heads)
        self.backbone = build_backbone(backbone, pretrained)
        d = self.backbone.out_dim
        # only created when asked, so the state dict of ordinary runs keeps its keys
        self.hidden = hidden_stack(d, hidden_layers) if hidden_layers else None
        lin = nn.Linear(d, len(heads))  # the default nn.Linear init, one row per head
        self.head_weight = nn.Parameter(lin.weight.detach().clone())
        self.head_bias = nn.Parameter(lin.bias.detach().clone())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.backbone(x)
        return h if self.hidden is None else self.hidden(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Plain logits ``[B, K]`` (inference; training goes through ``aal_k8s.heads``)."""
        h = self.features(x)
        return h @ self.head_weight.t().to(h.dtype) + self.head_bias.to(h.dtype)


class Classifier(nn.Module):
    """One attribute of the final model set: the backbone and a ``[1, D]`` linear head; ``forward``
    gives logits ``[B]``. At module level so that loaded model sets pickle (multiprocessing, Ray...)."""

    def __init__(self, backbone: str):
        super().__init__()
        self.backbone = build_backbone(backbone, "none")
        self.head = nn.Linear(self.backbone.out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)).squeeze(1)
