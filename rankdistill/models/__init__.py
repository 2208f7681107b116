"""Base recommenders and their construction from a config."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError, DataError
from ..io import torch_load, torch_save
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
    payload = torch_load(path, "model file", map_location=device)
    if payload.get("kind") not in (_CHECKPOINT_KIND, "rankdistill-trainer"):
        raise DataError(f"{path}: not a rankdistill model file")
    missing = [key for key in ("config", "state_dict") if not isinstance(payload.get(key), dict)]
    if missing:
        raise DataError(f"{path}: incomplete model file (no {' or '.join(missing)})")
    return payload


def model_info(path) -> dict[str, Any]:
    """The ``info`` saved with a model (for a trained model: its split's
    identity, its metrics, ...)."""
    return _read(path, "cpu").get("info", {})


def load_model(path, *, train: tuple[torch.Tensor, torch.Tensor] | None = None,
               device: torch.device | str = "cpu",
               shape: tuple[int, int] | None = None) -> tuple[Recommender, dict[str, Any]]:
    """``(model, info)`` from a file written by ``save_model`` or a trainer
    checkpoint (whose current model is loaded). ``shape``: the (users, items)
    the model must be for (a ``ConfigError`` naming both otherwise)."""
    payload = _read(path, device)
    config = payload["config"]
    if shape is not None and (config.get("n_users"), config.get("n_items")) != tuple(shape):
        raise ConfigError(f"{path} is a model of {config.get('n_users')} users x {config.get('n_items')} items, "
                          f"but the data has {shape[0]} x {shape[1]}: it was trained on another data set")
    model = build_model(payload["config"], train=train)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:  # missing or unexpected keys, wrong shapes
        first = str(exc).strip().splitlines()
        raise DataError(f"{path}: its weights do not fit its model configuration "
                        f"({first[1].strip() if len(first) > 1 else first[0]})") from None
    return model.to(device), payload.get("info", {})
