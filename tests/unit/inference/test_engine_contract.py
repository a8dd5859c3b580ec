"""One contract for every Engine: join between steps, one token per sequence per step,
release, reset, deterministic with a seed. The transformers case loads the real model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inference.engine import ContextLengthExceeded
from inference.scripted import ScriptedEngine
from schemas.events import ChatMessage, GenerationParams


@pytest.fixture(
    scope="module", params=["scripted", pytest.param("transformers", marks=pytest.mark.slow)]
)
def engine(request):
    if request.param == "scripted":
        yield ScriptedEngine(token_rate=0)
        return
    import torch

    from inference.model_files import ModelNotFound, resolve_model_dir
    from inference.transformers_engine import TransformersEngine

    torch.set_num_threads(2)
    try:
        model_dir = resolve_model_dir(
            None, Path(os.environ.get("CHATLOG_TEST_HOME", ".chatlog/test"))
        )
    except ModelNotFound as exc:
        pytest.skip(str(exc))
    e = TransformersEngine(model_dir, "SmolLM2-135M-Instruct", device="cpu")
    yield e
    e.close()


def _prepare(engine, text, **params):
    return engine.prepare(
        [ChatMessage("user", text)], GenerationParams(**{"max_tokens": 8, **params})
    )


def test_sequences_join_between_steps_and_leave_on_release(engine):
    engine.reset()
    engine.add("a", _prepare(engine, "Say hello."))
    assert [t.seq_id for t in engine.step()] == ["a"]
    engine.add("b", _prepare(engine, "Name a colour."))
    assert sorted(t.seq_id for t in engine.step()) == ["a", "b"]
    engine.release("a")
    assert [t.seq_id for t in engine.step()] == ["b"]
    engine.release("b")
    assert engine.step() == []
    engine.release("never-added")  # ignored


def test_same_seed_same_tokens_and_batching_does_not_change_greedy_output(engine):
    def run(ids_and_prompts):
        engine.reset()
        out: dict[str, list[int]] = {sid: [] for sid, _ in ids_and_prompts}
        for sid, p in ids_and_prompts:
            engine.add(sid, p)
        for _ in range(6):
            for t in engine.step():
                out[t.seq_id].append(t.token_id)
        return out

    greedy = _prepare(engine, "What is two plus two?", temperature=0.0)
    alone = run([("x", greedy)])["x"]
    batched = run(
        [("y", _prepare(engine, "A much longer prompt, about the sea and the sky.")), ("x", greedy)]
    )
    assert batched["x"] == alone
    sampled = _prepare(engine, "Tell me something.", temperature=0.9, top_p=0.9, seed=7)
    assert run([("s", sampled)])["s"] == run([("s", sampled)])["s"]
    engine.reset()


def test_prompt_over_the_context_is_rejected(engine):
    with pytest.raises(ContextLengthExceeded):
        _prepare(engine, "word " * 10_000)
