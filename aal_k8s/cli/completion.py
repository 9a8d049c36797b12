"""Print a shell completion script (bash or zsh) for every subcommand and option.

    bash:  aal-k8s completion bash > ~/.local/share/bash-completion/completions/aal-k8s
    zsh:   aal-k8s completion zsh > "${fpath[1]}/_aal-k8s"   (then restart the shell)

The script is generated from the command line's own parser (shtab), so it never lags behind it.
"""

from __future__ import annotations

import sys

from aal_k8s.cli.common import examples

HELP = "print a bash or zsh completion script"
EXAMPLES = examples(
    "aal-k8s completion bash > ~/.local/share/bash-completion/completions/aal-k8s",
    'aal-k8s completion zsh > "${fpath[1]}/_aal-k8s"',
)


def add_arguments(p) -> None:
    p.add_argument("shell", choices=("bash", "zsh"), help="the shell to complete in")


def run(args) -> int:
    import shtab

    from aal_k8s.cli import build_parser

    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return 0
