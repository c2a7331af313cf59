"""torch.hub entry point: ``torch.hub.load(repo_dir, "camo_segmenter", checkpoint=..., source="local")``.

Imports stay inside the function, so ``torch.hub.list`` / ``help`` answer without loading timm or OpenCV.
"""
dependencies = ["torch", "timm", "albumentations", "cv2", "numpy"]


def camo_segmenter(checkpoint, weights="best", device="auto", tta="none", img_size=None):
    """A trained camouflage segmenter (``engine.api.CamoModel``): ``.predict(image_rgb)`` -> (H, W) in [0, 1].

    Args:
        checkpoint: a ``.pth`` written by ``train`` or a ``.safetensors`` written by ``export``.
        weights: ``best`` | ``base`` | ``ema``.
        device: ``auto`` | ``cpu`` | ``cuda`` | a ``torch.device``.
        tta: ``none`` | ``flip`` | ``flip-scale``.
        img_size: inference side (default: the training ``--img-size``).
    """
    from engine.api import load_model

    return load_model(checkpoint, weights=weights, device=device, tta=tta, img_size=img_size)
