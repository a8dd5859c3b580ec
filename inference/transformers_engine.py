"""The real engine: a Hugging Face causal LM, batched step by step with a KV cache we manage.

Why not `model.generate`: it runs one fixed batch to the end. Why not transformers' own
continuous batching (`generate_batch`, paged attention): measured on this 2-core CPU it
was slower than a single stream. Here the running sequences share one left-padded
DynamicCache; joining sequences are prefilled together (left-padded) and their caches
are padded to the common length and concatenated on the batch axis; leaving sequences
are cut out with `batch_select_indices`, and columns that became all padding are
trimmed. Each step is then one forward of shape [batch, 1]: the weights are read once
for every sequence, which is where the aggregate speed-up comes from.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.cache_utils import DynamicCache

from inference.engine import (
    ContextLengthExceeded,
    EngineError,
    InvalidPrompt,
    PreparedPrompt,
    StepToken,
)
from inference.sampling import sample_rows
from schemas.events import ChatMessage, GenerationParams

log = logging.getLogger(__name__)


@dataclass
class _Row:
    seq_id: str
    generator: torch.Generator | None
    params: GenerationParams
    tokens: list[int] = field(default_factory=list)


def pick_device(device: str) -> torch.device:
    """`auto` is CUDA when there is one, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TransformersEngine:
    """See the module docstring; satisfies `inference.engine.Engine`."""

    def __init__(self, model_dir: Path, model_id: str, *, device: str = "auto") -> None:
        self.model_id = model_id
        self.device = pick_device(device)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.tokenizer: Any = AutoTokenizer.from_pretrained(model_dir)
        model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        self.model: Any = model.to(self.device).eval()
        self.max_context = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.eos_ids = self._eos_ids()
        self._lock = threading.Lock()
        self._rows: list[_Row] = []
        self._joining: list[tuple[_Row, PreparedPrompt]] = []
        self._cache: Any = None  # a DynamicCache; typed loosely, its layer union is wide
        self._mask: torch.Tensor | None = None  # [batch, cache_len + 1]
        self._next_ids: torch.Tensor | None = None  # [batch] last sampled token
        self._pos: torch.Tensor | None = None  # [batch] position of that token

    def _eos_ids(self) -> frozenset[int]:
        ids: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(int(i) for i in source)
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id:
            ids.add(im_end)
        return frozenset(ids)

    # -- the Engine interface -------------------------------------------------------
    def prepare(self, messages: Sequence[ChatMessage], params: GenerationParams) -> PreparedPrompt:
        if not messages:
            raise InvalidPrompt("a prompt needs at least one message")
        try:
            ids = self.tokenizer.apply_chat_template(
                [{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        except Exception as exc:  # jinja raises TemplateError for roles it refuses
            raise InvalidPrompt(f"chat template rejected the messages: {exc}") from exc
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        if len(ids) >= self.max_context:
            raise ContextLengthExceeded(
                f"prompt is {len(ids)} tokens; the model's context holds {self.max_context}"
            )
        max_new = max(0, min(params.max_tokens, self.max_context - len(ids)))
        return PreparedPrompt(tuple(int(i) for i in ids), max_new, params)

    def add(self, seq_id: str, prompt: PreparedPrompt) -> None:
        gen = None
        if prompt.params.seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(prompt.params.seed)
        with self._lock:
            self._joining.append((_Row(seq_id, gen, prompt.params), prompt))

    def release(self, seq_id: str) -> None:
        with self._lock:
            self._joining = [j for j in self._joining if j[0].seq_id != seq_id]
            keep = [i for i, r in enumerate(self._rows) if r.seq_id != seq_id]
            if len(keep) != len(self._rows):
                self._select(keep)

    def reset(self) -> None:
        with self._lock:
            self._rows, self._joining = [], []
            self._cache = self._mask = self._next_ids = self._pos = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=True))

    def close(self) -> None:
        self.reset()
        self.model = None

    def step(self) -> list[StepToken]:
        try:
            with self._lock, torch.inference_mode(), warnings.catch_warnings():
                # transformers 5.24 deprecates `past_key_values` for `cache`, yet a cache
                # passed as `cache` is silently ignored there (and 5.17 has no `cache`).
                warnings.filterwarnings("ignore", ".*past_key_values.*", FutureWarning)
                out: list[StepToken] = []
                if self._rows:
                    out += self._decode_step()
                if self._joining:
                    out += self._prefill(self._joining)
                    self._joining = []
                return out
        except torch.cuda.OutOfMemoryError as exc:
            raise EngineError(f"out of device memory: {exc}") from exc
        except EngineError:
            raise
        except Exception as exc:  # any model failure fails the batch, not the replica
            raise EngineError(f"{type(exc).__name__}: {exc}") from exc

    # -- batch mechanics ----------------------------------------------------------------
    def _decode_step(self) -> list[StepToken]:
        assert self._next_ids is not None and self._mask is not None and self._pos is not None
        logits = self.model(
            input_ids=self._next_ids[:, None],
            attention_mask=self._mask,
            position_ids=self._pos[:, None],
            past_key_values=self._cache,
            use_cache=True,
        ).logits[:, -1, :]
        return self._emit(self._rows, logits, existing=True)

    def _prefill(self, joining: list[tuple[_Row, PreparedPrompt]]) -> list[StepToken]:
        width = max(len(p.token_ids) for _, p in joining)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(joining), width), pad, dtype=torch.long)
        mask = torch.zeros((len(joining), width), dtype=torch.long)
        for i, (_, p) in enumerate(joining):
            ids[i, width - len(p.token_ids) :] = torch.tensor(p.token_ids)
            mask[i, width - len(p.token_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,  # only the last position's logits: the prefill's lm_head is large
        ).logits[:, -1, :]
        rows = [r for r, _ in joining]
        self._merge(rows, cache, mask, pos[:, -1])
        return self._emit(rows, logits, existing=False)

    def _emit(self, rows: list[_Row], logits: torch.Tensor, *, existing: bool) -> list[StepToken]:
        """Sample one token per row; store it as the next input of those rows."""
        next_ids = sample_rows(logits, [(r.params, r.generator) for r in rows])
        assert self._next_ids is not None and self._pos is not None and self._mask is not None
        n = len(rows)
        if existing:  # rows are the first n of the batch; joiners were appended after them
            self._next_ids[:n] = next_ids
            self._pos[:n] += 1
            ones = torch.ones((self._mask.shape[0], 1), dtype=torch.long, device=self.device)
            self._mask = torch.cat([self._mask, ones], dim=1)
        else:
            self._next_ids[-n:] = next_ids
            self._pos[-n:] += 1
        out = []
        for row, tok in zip(rows, next_ids.tolist(), strict=True):
            row.tokens.append(tok)
            out.append(StepToken(row.seq_id, tok, tok in self.eos_ids))
        return out

    def _merge(
        self, rows: list[_Row], cache: Any, mask: torch.Tensor, last_pos: torch.Tensor
    ) -> None:
        """Append prefilled rows to the running batch, left-padding the shorter cache."""
        ids = torch.zeros(len(rows), dtype=torch.long, device=self.device)
        if self._cache is None or not self._rows:
            self._rows, self._cache = list(rows), cache
            self._mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            self._next_ids, self._pos = ids, last_pos.clone()
            return
        assert self._mask is not None and self._next_ids is not None and self._pos is not None
        # the running mask already has its column for the next token; the new one gets one
        new_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        width = max(self._mask.shape[1], new_mask.shape[1])
        layers = []
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            k = torch.cat([_left_pad(old.keys, width - 1), _left_pad(new.keys, width - 1)])
            v = torch.cat([_left_pad(old.values, width - 1), _left_pad(new.values, width - 1)])
            layers.append((k, v))
        self._cache = DynamicCache(ddp_cache_data=layers)  # type: ignore[arg-type]
        self._mask = torch.cat(
            [_left_pad(self._mask, width, dim=1), _left_pad(new_mask, width, dim=1)]
        )
        self._next_ids = torch.cat([self._next_ids, ids])
        self._pos = torch.cat([self._pos, last_pos.clone()])
        self._rows += rows

    def _select(self, keep: list[int]) -> None:
        """Keep only these batch rows; drop leading columns that are padding everywhere."""
        if not keep:
            self._rows, self._cache = [], None
            self._mask = self._next_ids = self._pos = None
            return
        assert self._cache is not None and self._mask is not None
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        self._rows = [self._rows[i] for i in keep]
        mask = self._mask[idx]
        live = int(mask.any(dim=0).nonzero()[0].item())  # first column some row still uses
        self._mask = mask[:, live:]
        layers = [
            (lay.keys[idx][:, :, live:], lay.values[idx][:, :, live:]) for lay in self._cache.layers
        ]
        self._cache = DynamicCache(ddp_cache_data=layers)  # type: ignore[arg-type]
        assert self._next_ids is not None and self._pos is not None
        self._next_ids, self._pos = self._next_ids[idx], self._pos[idx]


def _left_pad(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    """Zero-pad `t` on the left of `dim` up to `width` (zeros are masked out)."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
