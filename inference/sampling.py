"""Per-row sampling: each request keeps its own temperature, top_p and seeded generator."""

from __future__ import annotations

import torch

from schemas.events import GenerationParams


def sample_rows(
    logits: torch.Tensor, rows: list[tuple[GenerationParams, torch.Generator | None]]
) -> torch.Tensor:
    """One token id per row of `logits` [rows, vocab]; temperature 0 is greedy."""
    out = torch.empty(len(rows), dtype=torch.long, device=logits.device)
    greedy = logits.argmax(dim=-1)
    for i, (params, gen) in enumerate(rows):
        if params.temperature <= 0.0:
            out[i] = greedy[i]
            continue
        probs = torch.softmax(logits[i].float() / params.temperature, dim=-1)
        if params.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            cut = sorted_p.cumsum(-1) - sorted_p > params.top_p  # keep the first token always
            sorted_p[cut] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
        out[i] = torch.multinomial(probs, 1, generator=gen)[0]
    return out
