"""Wiring: settings -> engine -> worker. The one place that picks production parts."""

from __future__ import annotations

import logging

from inference.engine import Engine
from inference.scripted import ScriptedEngine
from inference.settings import InferenceSettings

log = logging.getLogger(__name__)


def build_engine(settings: InferenceSettings) -> Engine:
    """The engine the settings name; the scripted one only when asked for explicitly."""
    if settings.engine == "scripted":
        return ScriptedEngine(
            settings.model_id,
            token_rate=settings.scripted_token_rate,
            repeat=settings.scripted_reply_repeat,
            fail_marker=settings.scripted_fail_marker,
            max_context=settings.scripted_max_context,
        )
    import torch

    from inference.model_files import resolve_model_dir
    from inference.transformers_engine import TransformersEngine

    # Ray sets OMP_NUM_THREADS=1 in replicas; torch would then decode on one core.
    torch.set_num_threads(settings.effective_torch_threads)
    model_dir = resolve_model_dir(settings.model_path, settings.home)
    engine = TransformersEngine(model_dir, settings.model_id, device=settings.device)
    log.info("loaded %s from %s on %s", settings.model_id, model_dir, engine.device)
    return engine
