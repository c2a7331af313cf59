"""The third-party packages a command needs, and the one-line error that names a missing one.

Standard library only, so it still answers when the package missing is one ``engine`` imports at
the top (``yaml``, ``cv2``, ...). ``train_ultimate.main`` turns a ``ModuleNotFoundError`` for any
package listed here into :func:`missing_package_message`; a run checks the packages its settings
need before it trains (:func:`check_training_packages`), the dry run lists them.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Dict, List, Optional

# import name -> pip name (requirements.txt); only these are reported as "not installed".
PIP_NAMES = {
    "torch": "torch", "torchvision": "torchvision", "timm": "timm", "huggingface_hub": "huggingface_hub",
    "albumentations": "albumentations", "cv2": "opencv-python-headless", "tensorboard": "tensorboard",
    "tqdm": "tqdm", "yaml": "pyyaml", "py_sod_metrics": "pysodmetrics", "skimage": "scikit-image",
    "numpy": "numpy", "PIL": "pillow", "matplotlib": "matplotlib", "safetensors": "safetensors",
}
INSTALL_HINT = ("pip install -r requirements.txt (offline, e.g. Kaggle without internet: attach a dataset of the "
                "wheels and pip install --no-index --find-links /kaggle/input/<wheels> {pip})")


class MissingPackageError(ModuleNotFoundError):
    """A package a command needs is not installed; ``str()`` is one line naming it and the pip command."""


def missing_package_message(module: str, needed_for: str = "", *more: str) -> str:
    """One line naming the pip package of import name ``module`` (and of ``more``) and how to install it."""
    pips = [PIP_NAMES.get(name.split(".")[0], name.split(".")[0]) for name in (module, *more)]
    reason = f" (needed for {needed_for})" if needed_for else ""
    named = f"the Python package {pips[0]} is" if len(pips) == 1 else f"the Python packages {', '.join(pips)} are"
    return f"{named} not installed{reason}: " + INSTALL_HINT.format(pip=" ".join(pips))


def as_missing_package(error: ImportError) -> Optional[MissingPackageError]:
    """``error`` as a :class:`MissingPackageError` when it is a listed package that is not installed
    (None otherwise: a missing module of this repository is a bug, and keeps its traceback)."""
    if isinstance(error, MissingPackageError):
        return error
    name = getattr(error, "name", None) or ""
    if not isinstance(error, ModuleNotFoundError) or name.split(".")[0] not in PIP_NAMES:
        return None
    return MissingPackageError(missing_package_message(name))


def missing_package_line(error: ModuleNotFoundError) -> str:
    """The one line :func:`as_missing_package` makes of ``error``; re-raises ``error`` when it is not a
    listed package (a module of this repository: a bug keeps its traceback)."""
    missing = as_missing_package(error)
    if missing is None:
        raise error
    return str(missing)


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported (found on the path; not imported here)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
        return False


def training_packages(config: Any) -> Dict[str, str]:
    """``{import name: why}`` of the packages ``train`` imports with ``config`` (a ``TrainConfig``),
    beyond torch and numpy."""
    needed = {"timm": "the encoder", "albumentations": "augmentation", "cv2": "image reading",
              "PIL": "palette PNG masks", "yaml": "config.yaml", "tqdm": "progress",
              "tensorboard": "TensorBoard logs in <checkpoint-dir>/runs", "matplotlib": "the report's PNG curves"}
    if config.dataset_path is None:
        needed["skimage"] = "the synthetic scenes' textures"
    if config.best_metric in ("sm", "wfm"):
        needed["py_sod_metrics"] = f"--best-metric {config.best_metric}"
    if str(config.pretrained_path or "").endswith(".safetensors"):
        needed["safetensors"] = "--pretrained-path *.safetensors"
    return needed


def check_training_packages(config: Any) -> List[str]:
    """The packages of :func:`training_packages`, checked: their names, when all are installed.

    Raises:
        MissingPackageError: one or more are not installed (the first named, with the count).
    """
    needed = training_packages(config)
    missing = [module for module in needed if not is_installed(module)]
    if missing:
        raise MissingPackageError(missing_package_message(missing[0], "; ".join(needed[m] for m in missing),
                                                          *missing[1:]))
    return [PIP_NAMES[module] for module in needed]
