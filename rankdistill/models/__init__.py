"""Base recommenders and their construction from a config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError
from ..io import torch_save
from .base import Recommender
from .bpr import BPR
from .cdae import CDAE
from .neumf import NeuMF

__all__ = ["BPR", "CDAE", "MODELS", "NeuMF", "Recommender", "build_model", "load_model", "model_info", "save_model"]

MODELS: dict[str, type[Recommender]] = {"bpr": BPR, "neumf": NeuMF, "cdae": CDAE}


def build_model(config: dict[str, Any], *, train: tuple[torch.Tensor, torch.Tensor] | None = None) -> Recommender:
    """A model from ``Recommender.config()``-style options. ``train`` (CSR of
    the training items) is passed to the models that read their input from it
    (CDAE)."""
    options = dict(config)
    name = options.pop("model", None)
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    cls = MODELS[name]
    if cls is CDAE:
        options["train"] = train
    try:
        return cls(**options)
    except TypeError as exc:
        raise ConfigError(f"bad options for model {name!r}: {exc}") from None


_CHECKPOINT_KIND = "rankdistill-model"


def save_model(path, model: Recommender, **info: Any) -> None:
    """Write ``model`` (config + weights) and JSON-like ``info`` atomically."""
    torch_save(path, {"kind": _CHECKPOINT_KIND, "config": model.config(),
                      "state_dict": model.state_dict(), "info": info})


def _read(path, device: torch.device | str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no such model file", str(path))
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception:  # torch raises many types for a file that is not a checkpoint
        raise DataError(f"{path}: not a readable model file") from None
    if not isinstance(payload, dict) or payload.get("kind") not in (_CHECKPOINT_KIND, "rankdistill-trainer"):
        raise DataError(f"{path}: not a rankdistill model file")
    return payload


def model_info(path) -> dict[str, Any]:
    """The ``info`` saved with a model (for a trained model: its split seed and
    data fingerprint, its metrics, ...)."""
    return _read(path, "cpu").get("info", {})


def load_model(path, *, train: tuple[torch.Tensor, torch.Tensor] | None = None,
               device: torch.device | str = "cpu") -> tuple[Recommender, dict[str, Any]]:
    """``(model, info)`` from a file written by ``save_model`` or a trainer
    checkpoint (whose current model is loaded)."""
    payload = _read(path, device)
    model = build_model(payload["config"], train=train)
    model.load_state_dict(payload["state_dict"])
    return model.to(device), payload.get("info", {})
