"""Several models from one config (#14 item 4): each model's replica settings, and the
paths of the Serve app's ingress."""

from __future__ import annotations

import pytest

from inference.settings import InferenceSettings
from infra.settings import DEFAULT_MODEL, GREEDY_MODEL


def test_the_default_serves_smollm2_and_its_greedy_configuration() -> None:
    settings = InferenceSettings()
    assert settings.model_ids == [DEFAULT_MODEL, GREEDY_MODEL]
    default, greedy = settings.served()
    assert (default.model_id, default.engine, default.greedy) == (DEFAULT_MODEL, "transformers", False)
    assert (greedy.model_id, greedy.engine, greedy.greedy) == (GREEDY_MODEL, "transformers", True)
    assert default.model_path == greedy.model_path  # the same weights


def test_each_model_gets_its_overrides_and_its_own_consumer_group() -> None:
    settings = InferenceSettings(
        models="a,b,c",
        topic_prefix="t.",
        engine="scripted",
        model_settings={"b": {"replicas": 2, "max_batch": 4}, "c": {"replicas": 0}},
    )
    a, b = settings.served()  # c has no replicas here: another deployment serves it
    assert (a.model_id, a.replicas, a.max_batch) == ("a", 1, 16)
    assert (b.model_id, b.replicas, b.max_batch, b.engine) == ("b", 2, 4, "scripted")
    assert {a.group_id, b.group_id, settings.for_model("c").group_id} == {
        "t.chatlog-inference.a",
        "t.chatlog-inference.b",
        "t.chatlog-inference.c",
    }


def test_a_typo_in_model_settings_is_refused_not_ignored() -> None:
    settings = InferenceSettings(models="a", model_settings={"a": {"replica": 2}})
    with pytest.raises(ValueError, match="replica"):
        settings.served()
    with pytest.raises(ValueError, match="not among"):
        settings.for_model("zzz")


def test_model_settings_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATLOG_MODELS", "x,y")
    monkeypatch.setenv("CHATLOG_MODEL_SETTINGS", '{"y": {"engine": "scripted", "replicas": 3}}')
    y = InferenceSettings().for_model("y")
    assert (y.engine, y.replicas, y.model_id) == ("scripted", 3, "y")


def test_ingress_paths() -> None:
    route = pytest.importorskip("inference.deployment").route
    models = ["m-1", "org/m-2"]
    assert route("/inference/status", "/inference", models) == (None, "status")
    assert route("/inference", "/inference", models) == (None, "status")
    assert route("/inference/metrics", "/inference", models) == (None, "metrics")
    assert route("/inference/m-1/status", "/inference", models) == ("m-1", "status")
    assert route("/inference/org/m-2/metrics", "/inference/", models) == ("org/m-2", "metrics")
    assert route("/inference/nope/status", "/inference", models) is None
    assert route("/inference/m-1/other", "/inference", models) is None


async def test_a_replica_takes_only_its_own_models_prompts_and_the_greedy_one_decodes_greedily() -> (
    None
):
    from inference.scripted import ScriptedEngine
    from inference.worker import ReplicaWorker
    from schemas.events import ChatMessage, GenerationParams, PromptSubmitted

    settings = InferenceSettings(
        models="a,b", engine="scripted", model_settings={"a": {"greedy": True}}
    ).for_model("a")
    worker = ReplicaWorker(settings, ScriptedEngine("a"))  # not started: no Kafka needed
    try:
        worker.offsets.assign([0])

        def submitted(request_id: str, model: str) -> PromptSubmitted:
            return PromptSubmitted(
                request_id=request_id,
                conversation_id="c",
                user_id="u",
                model=model,
                messages=(ChatMessage("user", "hi"),),
                params=GenerationParams(max_tokens=5, temperature=0.9),
            )

        worker._prompt(submitted("for-b", "b"), 0, 0)
        worker._prompt(submitted("for-a", "a"), 0, 1)
        assert list(worker.scheduler.by_request) == ["for-a"]  # b's is left to b's group
        prepared = worker.scheduler.by_request["for-a"].prepared
        assert prepared is not None and prepared.params.temperature == 0.0
        worker.offsets.finish(0, 1)
        assert worker.offsets.pending_commits() == {0: 2}  # b's prompt never holds a commit
    finally:
        await worker.publisher.stop()
        await worker._beat_producer.stop()
