"""The real SmolLM2-135M-Instruct on this CPU, through a ReplicaWorker and real Kafka."""

from __future__ import annotations

import pytest

from inference.detok import IncrementalDetokenizer
from inference.settings import InferenceSettings
from infra.settings import DEFAULT_MODEL, GREEDY_MODEL
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
        model = model_settings.model_id
        short = prompt(
            "What is the capital of France? Answer in one sentence.",
            max_tokens=48,
            temperature=0.0,
            model=model,
        )
        capped = prompt(
            "Write a long story about a dragon.", max_tokens=5, temperature=0.0, model=model
        )
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


async def test_the_two_default_models_side_by_side_each_answer_their_own(
    model_settings, completions
):
    """SmolLM2 and its greedy configuration (the default `models`), one worker each in its
    own consumer group: each prompt is answered by its model, and the greedy one gives
    the same answer to the same prompt even when the prompt asks for sampling."""
    both = InferenceSettings(
        **(model_settings.model_dump() | {"models": f"{DEFAULT_MODEL},{GREEDY_MODEL}"})
    )
    default, greedy = both.served()
    async with worker(default) as wd, worker(greedy) as wg:
        await wait_assigned(wd, both.partitions, timeout=120)
        await wait_assigned(wg, both.partitions, timeout=120)
        ask = "Name a colour."
        sampled = [prompt(ask, max_tokens=12, temperature=1.0, model=GREEDY_MODEL) for _ in "ab"]
        plain = prompt(ask, max_tokens=12, temperature=0.0, model=DEFAULT_MODEL)
        await produce(both, *sampled, plain)
        ids = [p.request_id for p in (*sampled, plain)]
        await completions.wait_for(lambda: all(completions.finals(r) for r in ids), 240)
    starts = [completions.events(r)[0] for r in ids]
    assert [(s.model, s.replica_id) for s in starts] == [
        (GREEDY_MODEL, wg.replica_id),
        (GREEDY_MODEL, wg.replica_id),
        (DEFAULT_MODEL, wd.replica_id),
    ]
    texts = [_text(completions.events(r)) for r in ids]
    assert texts[0] == texts[1] != ""  # greedy: temperature 1.0 asked, the same answer twice
    assert texts[2]
