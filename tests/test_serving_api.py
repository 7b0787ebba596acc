"""The HTTP contract over real HTTP against a real server and real ONNX Runtime sessions."""
import math

import httpx
import pytest


@pytest.fixture(scope="module")
def http(live_server):
    with httpx.Client(base_url=live_server, timeout=60) as client:
        yield client


def test_generate_returns_n_names_with_nll_version_and_echoed_seed(http):
    body = http.post("/v1/generate", json={"n": 25, "seed": 11}).json()
    assert body["model"] == "mlp" and body["seed"] == 11 and body["version"]
    assert len(body["names"]) == 25
    assert all(n["name"] and n["nll"] > 0 for n in body["names"])
    assert http.post("/generate", json={"n": 25, "seed": 11}).json()["names"] == body["names"]  # alias, same seed


def test_request_without_seed_gets_one_and_it_reproduces(http):
    first = http.post("/v1/generate", json={"n": 8}).json()
    again = http.post("/v1/generate", json={"n": 8, "seed": first["seed"]}).json()
    assert again["names"] == first["names"]


def test_controls_shape_the_names(http, served_registry):
    training = set((served_registry / "mlp").glob("*/training_names.txt").__next__().read_text().split())
    body = http.post("/v1/generate", json={"n": 40, "seed": 3, "prefix": "ma", "min_length": 4, "max_length": 7,
                                           "unique": True, "exclude_training": True}).json()
    names = [n["name"] for n in body["names"]]
    assert len(names) == 40 and not body["exhausted"]
    assert all(n.startswith("ma") and 4 <= len(n) <= 7 for n in names)
    assert len(set(names)) == 40
    assert not set(names) & training


def test_greedy_and_top_1_are_the_single_most_likely_name(http):
    greedy = http.post("/v1/generate", json={"n": 3, "temperature": 0}).json()["names"]
    top1 = http.post("/v1/generate", json={"n": 3, "top_k": 1, "seed": 9}).json()["names"]
    assert len({n["name"] for n in greedy}) == 1
    assert greedy == top1


def test_name_nll_equals_its_score(http):
    generated = http.post("/v1/generate", json={"n": 5, "seed": 21, "prefix": "k"}).json()["names"]
    scored = http.post("/v1/score", json={"names": [n["name"] for n in generated]}).json()["results"]
    for g, s in zip(generated, scored):
        assert g["nll"] == pytest.approx(s["nll"], abs=1e-4)


def test_score_reports_each_character_and_the_end_token(http):
    body = http.post("/v1/score", json={"names": ["emma", "zzq"]}).json()
    emma, zzq = body["results"]
    assert [c["char"] for c in emma["chars"]] == ["e", "m", "m", "a", "."]
    assert emma["nll"] == pytest.approx(sum(c["nll"] for c in emma["chars"]))
    assert emma["nll_per_char"] == pytest.approx(emma["nll"] / 5)
    assert emma["perplexity"] == pytest.approx(math.exp(emma["nll_per_char"]))
    assert all(c["p"] == pytest.approx(math.exp(-c["nll"])) for c in emma["chars"])
    assert zzq["nll_per_char"] > emma["nll_per_char"]


def test_models_lists_both_models_with_metadata(http):
    body = http.get("/v1/models").json()
    assert body["default"] == "mlp"
    by_name = {m["name"]: m for m in body["models"]}
    assert set(by_name) == {"mlp", "bigram-counts"}
    assert by_name["bigram-counts"]["block_size"] == 1 and by_name["mlp"]["block_size"] == 3
    assert by_name["mlp"]["vocab"][0] == "." and by_name["mlp"]["backend"] == "onnxruntime"
    assert "val_nll" in by_name["mlp"]["metrics"]
    assert http.post("/v1/generate", json={"n": 2, "seed": 1, "model": "bigram-counts"}).json()["model"] == \
        "bigram-counts"


def test_health_ready_and_metrics(http):
    from prometheus_client.parser import text_string_to_metric_families

    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").json()["status"] == "ready"
    http.post("/v1/generate", json={"n": 3, "seed": 1})
    text = http.get("/metrics").text
    samples = {family.name: family.samples for family in text_string_to_metric_families(text)}
    # A labelled metric with no samples prints only its HELP and TYPE lines, so each must have samples here.
    for family in ("namegen_requests", "namegen_request_latency_seconds", "namegen_rows_per_step",
                   "namegen_queue_depth", "namegen_names_generated", "namegen_model_loaded"):
        assert samples.get(family), f"{family}: no samples"
    assert samples["namegen_reload_failures"] == []  # declared; nothing rejected on this registry
    assert 'route="/v1/generate",status="200"' in text


@pytest.mark.parametrize("body, field, words", [
    ({"n": 0}, "n", "greater than or equal to 1"),
    ({"n": 10001}, "n", "less than or equal to 10000"),
    ({"n": "many"}, "n", "valid integer"),
    ({"seed": -1}, "seed", "greater than or equal to 0"),
    ({"temperature": -0.5}, "temperature", "greater than or equal to 0"),
    ({"top_k": 0}, "top_k", "greater than or equal to 1"),
    ({"top_k": 2**63}, "top_k", "less than or equal to"),  # was a 500 from the engine's int64, for every row in flight
    ({"min_length": 6, "max_length": 3}, "max_length", "below min_length"),
    ({"prefix": "abcdef", "max_length": 4}, "max_length", "more than max_length"),
    ({"prefix": "a" * 40}, "max_length", "more than max_length (32)"),
    ({"prefix": "Zo9!"}, "prefix", "'!', '9', 'Z'"),
    ({"unique": "perhaps"}, "unique", "valid boolean"),
    ({"temprature": 1}, "temprature", "Extra inputs"),
    ({"n": True}, "n", "valid integer"),  # strict: a boolean is no count
    ({"n": 3.0}, "n", "valid integer"),
    ({"unique": "yes"}, "unique", "valid boolean"),
    ({"exclude_training": 0}, "exclude_training", "valid boolean"),
    ({"seed": "7"}, "seed", "valid integer"),
])
def test_invalid_generate_fields_are_422_naming_the_field(http, body, field, words):
    response = http.post("/v1/generate", json=body)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(e["loc"][-1] == field and words in e["msg"] for e in errors), errors


@pytest.mark.parametrize("body, loc", [
    ({"names": []}, ["body", "names"]),
    ({"names": ["emma", ""]}, ["body", "names", 1]),
    ({"names": ["emma", "Émile"]}, ["body", "names", 1]),
    ({"names": ["a" * 65]}, ["body", "names", 0]),
    ({}, ["body", "names"]),
])
def test_invalid_score_bodies_are_422_naming_the_field(http, body, loc):
    response = http.post("/v1/score", json=body)
    assert response.status_code == 422
    assert any(e["loc"] == loc for e in response.json()["detail"])


def test_unknown_model_is_404_naming_the_served_ones(http):
    for path, body in [("/v1/generate", {"model": "gpt"}), ("/v1/score", {"names": ["x"], "model": "gpt"})]:
        response = http.post(path, json=body)
        assert response.status_code == 404
        assert "'gpt'" in response.json()["detail"] and "mlp" in response.json()["detail"]


def test_malformed_json_and_oversized_bodies_are_4xx(http):
    assert http.post("/v1/generate", content=b'{"n": 3', headers={"content-type": "application/json"}
                     ).status_code in (400, 422)
    huge = {"names": ["a"] * 400_000}
    response = http.post("/v1/score", json=huge)
    assert response.status_code == 413 and "bytes" in response.json()["detail"]
    chunked = http.post("/v1/score", content=iter([b'{"names": [' + b'"a",' * 300_000, b'"a"]}']),
                        headers={"content-type": "application/json"})  # no content-length: counted as read
    assert chunked.status_code == 413


def test_generate_answers_alike_on_the_short_path_and_through_fastapi(http):
    # application/json is answered in front of FastAPI's routing (serving/asgi.py, ShortPath); other JSON
    # media types go through FastAPI's route. The same request must get the same answer either way.
    body = b'{"n": 20, "seed": 5, "prefix": "a", "unique": true, "temperature": 0.8}'
    short = http.post("/v1/generate", content=body, headers={"content-type": "application/json"})
    routed = http.post("/v1/generate", content=body, headers={"content-type": "application/vnd.namegen+json"})
    assert short.status_code == routed.status_code == 200
    assert short.json() == routed.json() and len(short.json()["names"]) == 20
    assert short.headers["content-type"] == routed.headers["content-type"]


@pytest.mark.parametrize("path, body, problem", [
    ("/v1/generate", b'{"n": 3', "Expecting ','"),
    ("/v1/generate", b'{"prefix": "\xff"}', "not UTF-8 text (byte 0xff)"),
    ("/v1/score", b'{"names": ["\xc3"]}', "not UTF-8 text (byte 0xc3)"),
    ("/v1/generate", b"[" * 10_000 + b"]" * 10_000, "nested too deeply"),
    ("/v1/score", b'{"names": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "nested too deeply"),
])
def test_malformed_bodies_are_one_422_naming_the_problem(http, path, body, problem):
    response = http.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["type"] == "json_invalid" and problem in error["ctx"]["error"]


@pytest.mark.parametrize("body", [b'{"n": 3', b"", b"[1, 2]", b"[" * 5000 + b"]" * 5000, b'{"n": true}', b'{"n": 0}', b'{"temperature": NaN}', b'{"prefix": "Zo9!"}',
                                  b'{"model": "gpt"}', b'{"prefx\\ud800": "a"}', b"\xff\xfe"])
def test_errors_answer_alike_on_the_short_path_and_through_fastapi(http, body):
    # Both call the route's one parse-validate-run function (serving/api/generate.py), errors included.
    short = http.post("/v1/generate", content=body, headers={"content-type": "application/json"})
    routed = http.post("/v1/generate", content=body, headers={"content-type": "application/vnd.namegen+json"})
    assert 400 <= short.status_code < 500
    assert (short.status_code, short.json()) == (routed.status_code, routed.json())


def test_top_k_at_or_past_the_vocabulary_keeps_every_character(http):
    plain = http.post("/v1/generate", json={"n": 6, "seed": 4}).json()["names"]
    assert http.post("/v1/generate", json={"n": 6, "seed": 4, "top_k": 2**63 - 1}).json()["names"] == plain


@pytest.mark.parametrize("path, raw, loc", [
    ("/v1/generate", b'{"temperature": NaN}', ["body", "temperature"]),
    ("/v1/generate", b'{"n": Infinity}', ["body", "n"]),
    ("/v1/generate", b'{"top_k": 1e400}', ["body", "top_k"]),  # Python's json reads it as inf
    ("/v1/generate", b'{"prefix": "\\ud800"}', ["body", "prefix"]),
    ("/v1/generate", b'{"prefx\\ud800": "a"}', ["body"]),  # the key itself is refused
    ("/v1/score", b'{"names": ["emma", "\\udfff"]}', ["body", "names", 1]),
])
def test_input_json_cannot_echo_back_is_still_422(http, path, raw, loc):
    # NaN, Infinity and lone surrogates parse, but a 422 that echoed them used to fail to render: a 500.
    response = http.post(path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert any(e["loc"] == loc for e in response.json()["detail"]), response.text


def test_admin_reload_is_disabled_without_a_token(http):
    assert http.post("/v1/admin/reload").status_code == 403
