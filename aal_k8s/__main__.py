"""``python -m aal_k8s`` is the ``aal-k8s`` command."""

from aal_k8s.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
