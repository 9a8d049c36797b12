"""Adversarial Attribute Learning run as one Kubernetes Job per training run.

Python API::

    import aal_k8s

    models = aal_k8s.load_model_set("models/")          # or "s3://bucket/aal/celeba", "aal-runs/synthetic"
    result = models.predict(["a.jpg", "b.png"])         # paths, PIL images or a uint8 tensor batch
    result.attributes, result.probabilities, result.decisions
"""


def load_model_set(path_or_uri: str, attrs: list[str] | None = None, device: str = "cpu", cache_dir: str | None = None):
    """A final model set ready to predict (``aal_k8s.modelset.ModelSet``): a folder made by
    ``aal-k8s download``, or ``<store>/<experiment>`` (downloaded, verified, into ``cache_dir``)."""
    from aal_k8s.modelset import load_model_set as load  # torch only when used: `import aal_k8s` stays light

    return load(path_or_uri, attrs, device, cache_dir)
