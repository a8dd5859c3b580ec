"""The real SmolLM2-135M-Instruct on this CPU, through a ReplicaWorker and real Kafka."""

from __future__ import annotations

import pytest

from inference.detok import IncrementalDetokenizer
from schemas.events import CompletionFinished, CompletionStarted, TokenChunk
from tests.integration.inference.conftest import produce, prompt, wait_assigned, worker

pytestmark = pytest.mark.slow


@pytest.fixture
def model_settings(inference_settings):
    pytest.importorskip("torch")
    from inference.model_files import ModelNotFound, default_gguf

    try:
        default_gguf()
    except ModelNotFound as exc:
        pytest.skip(str(exc))
    return inference_settings.model_copy(
        update={
            "engine": "transformers",
            "models": "SmolLM2-135M-Instruct",
            "torch_threads": 2,
            "device": "cpu",
        }
    )


def _text(events):
    chunks = [e for e in events if isinstance(e, TokenChunk)]
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert all("\ufffd" not in c.text for c in chunks)  # no chunk splits a character
    return "".join(c.text for c in chunks)


async def test_real_model_answers_in_english_with_usage_and_truthful_finish(
    model_settings, completions
):
    async with worker(model_settings) as w:
        await wait_assigned(w, model_settings.partitions)
        short = prompt(
            "What is the capital of France? Answer in one sentence.", max_tokens=48, temperature=0.0
        )
        capped = prompt("Write a long story about a dragon.", max_tokens=5, temperature=0.0)
        await produce(model_settings, short, capped)
        await completions.wait_for(
            lambda: completions.finals(short.request_id) and completions.finals(capped.request_id),
            240,
        )
        # the UTF-8 round trip through the model's own tokenizer and our detokeniser
        text = "Crème brûlée, naïve café — 日本語 and 🙂🚀 emoji"
        ids = w.engine.tokenizer.encode(text, add_special_tokens=False)  # type: ignore[attr-defined]
        detok = IncrementalDetokenizer(w.engine.decode)
        pieces = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)
    assert len(ids) > len(pieces) - pieces.count("") - 1  # some characters did span tokens

    events = completions.events(short.request_id)
    assert isinstance(events[0], CompletionStarted) and events[0].model == "SmolLM2-135M-Instruct"
    answer = _text(events)
    final = events[-1]
    assert isinstance(final, CompletionFinished)
    assert "Paris" in answer
    assert final.finish_reason == "stop" and 0 < final.usage.completion_tokens < 48
    assert final.usage.prompt_tokens > 10  # the chat template adds a system turn

    capped_final = completions.finals(capped.request_id)[0]
    assert capped_final.finish_reason == "length" and capped_final.usage.completion_tokens == 5
    assert len(_text(completions.events(capped.request_id)).split()) >= 2
