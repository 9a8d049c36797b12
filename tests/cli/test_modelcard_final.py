"""`build_final` writes the model card beside the manifest."""

from test_download_predict import build_model_set  # committed single-task runs, reduced, final/ built


def test_build_final_writes_the_card_beside_the_manifest(tiny_cfg):
    exp, _ = build_model_set(tiny_cfg)
    card = exp.store.get_bytes(exp.key("final", "MODEL_CARD.md")).decode()
    assert exp.experiment == "synthetic" and card.startswith("# Model card: synthetic\n")  # the dataset named once
    assert "| 1 | square | single |" in card
