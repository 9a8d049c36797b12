"""Say which head implementation is active (fused CPU/CUDA kernels or the PyTorch reference) and
what this machine offers, so a slow run can be traced to a missing extension at a glance."""

from __future__ import annotations

import json

from aal_k8s.cli.common import examples

HELP = "show which fused-op path and devices are active"
EXAMPLES = examples("aal-k8s doctor", "aal-k8s doctor --json")


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print the facts as JSON")


def run(args) -> int:
    from aal_k8s import ops

    facts = ops.describe()
    if args.json:
        print(json.dumps(facts, indent=1, sort_keys=True))
        return 0
    print(f"head implementation: {facts['active']}")
    print(f"CPU extension:       {'built' if facts['extension_built'] else 'missing (' + str(facts['extension_error']) + ')'}")
    cuda = "built" if facts["cuda_kernels"] else f"missing ({facts['cuda_kernels_error']})"
    print(f"CUDA kernels:        {cuda}")
    print(f"CUDA device:         {'yes' if facts['cuda_device'] else 'no'}")
    print(f"torch:               {facts['torch']} (CUDA {facts['torch_cuda'] or 'none'})")
    return 0
