"""Conditional models (sex, decade): records and their split, CSV input, training, export, serving, explain."""
import json
import math
from collections import Counter

import httpx
import onnx
import pytest

from conftest import interrupt_training, run_module
from namegen.contract import DEFAULT_GUIDANCE, ONNX_FILE, read_latest, read_manifest
from training.checkpoint import load_checkpoint
from training.conditions import Conditions, load_dataset, marginal_val_nll, parse_records
from training.data import DataError, Dataset


def test_records_are_one_per_name_sex_decade_and_split_as_the_unconditional_words():
    conditional = load_dataset(None, (2000, 2017), ("sex", "decade"))
    plain = load_dataset(None, (2000, 2017), ())
    records = list(zip(conditional.words, conditional.labels))
    assert len(set(records)) == len(records) and len(set(conditional.words)) < len(records)  # both sexes: twice
    assert conditional.words == plain.words and conditional.split == plain.split
    assert conditional.conditions == Conditions(("sex", "decade"), (("F", "M"), ("2000", "2010")))
    # each part's labels belong to its words: the same shuffle moved both
    assert set(zip(conditional.split.val, conditional.label_split["val"])) <= set(records)
    X, _ = conditional.contexts("val", 3)
    assert X.shape[1] == 5 and set(X[:, 3].tolist()) == {1, 2} and set(X[:, 4].tolist()) == {1, 2}


@pytest.mark.parametrize("text, reason", [
    ("name,decade\nemma,1990\n", "source.csv:1: the header must name the columns name,sex,decade; sex missing"),
    ("name,sex,decade\nemma,F,1990\nliam,M\n", "source.csv:3: expected 3 columns, got 2"),
    ("name,sex,decade\n\nemma,F,1990\nliam,,1990\n", "source.csv:4: empty sex"),
    ("name,sex,decade\nem.ma,F,1990\n", "source.csv:2: character '.' is not allowed in a name ('em.ma')"),
])
def test_bad_rows_of_a_records_file_name_file_line_and_reason(text, reason):
    with pytest.raises(DataError) as error:
        parse_records(text, "source.csv", ("sex", "decade"))
    assert str(error.value).startswith(reason)


def test_training_cli_refuses_bad_condition_input_in_one_line(tmp_path, records_file):
    bad = tmp_path / "bad.csv"
    bad.write_text("name,sex\nemma,F\nliam\n")
    for args, message in [(["--data", bad, "--condition", "sex"], f"{bad}:3: expected 2 columns, got 1"),
                          (["--condition", "colour", "--years", "2010-2017"], "the SSA data has only sex, decade"),
                          (["--data", records_file, "--condition", "sex", "--years", "1990-2000"], "--years selects"),
                          (["--model", "bigram-counts", "--data", records_file, "--condition", "sex"], "takes no conditions")]:
        done = run_module("training", "train", *args, "--out", tmp_path / "out", "--quiet")
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert message in done.stderr


def test_condition_lowers_val_nll_where_it_carries_information(tmp_path, ssa_words):
    from training.conditions import ConditionalDataset
    from training.models import ModelConfig
    from training.train import TrainConfig, train

    # The condition says the first letter (q or z): log 2 nats per name that only a conditional model saves.
    words = [("q" if i % 2 else "z") + w for i, w in enumerate(ssa_words[::16])]
    labels = [("q" if i % 2 else "z",) for i in range(len(words))]
    conditional = ConditionalDataset.from_records(words, labels, "synthetic", ("first",))
    plain = Dataset.from_words(words, "synthetic")  # the same words in the same order: the same split
    tc = TrainConfig(steps=600, batch_size=64, lr=3e-3, optimizer="adamw", seed=1, eval_every=600)
    val = {}
    for data, conditions in [(conditional, conditional.conditions.sizes), (plain, [])]:
        cfg = ModelConfig("mlp", data.vocab.size, n_embd=8, n_hidden=64, conditions=conditions)
        val[bool(conditions)] = train(cfg, tc, data, tmp_path / str(len(conditions)), progress=False)["metrics"]["val_nll"]
    per_char_gain = 0.69 / (sum(len(w) + 1 for w in words) / len(words))
    assert val[True] < val[False] - per_char_gain / 2, val


def test_checkpoint_eval_and_sample_know_the_conditions(conditional_checkpoint):
    meta = json.loads((conditional_checkpoint / "checkpoint.json").read_text())
    assert [c["name"] for c in meta["conditions"]] == ["sex", "decade"]
    assert abs(sum(entry["p"] for entry in meta["condition_prior"]) - 1) < 1e-6
    done = run_module("training", "eval", conditional_checkpoint)
    assert done.returncode == 0, done.stderr
    labels = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("val ") and len(line.split()) == 3]
    assert labels == ["marginal", "any", "sex=F", "sex=M", "decade=1920", "decade=2010"]
    checkpoint = load_checkpoint(conditional_checkpoint)
    marginal = marginal_val_nll(checkpoint.model, checkpoint.dataset(), checkpoint.block_size, meta["condition_prior"])
    assert f"val marginal {marginal:.4f}\n" in done.stdout
    girls = run_module("training", "sample", conditional_checkpoint, "--sex", "F", "--seed", "3", "-n", "30")
    boys = run_module("training", "sample", conditional_checkpoint, "--sex", "M", "--seed", "3", "-n", "30")
    assert girls.returncode == boys.returncode == 0 and girls.stdout != boys.stdout
    unguided = run_module("training", "sample", conditional_checkpoint, "--sex", "F", "--seed", "3", "-n", "30",
                          "--guidance", "0")
    assert unguided.returncode == 0 and unguided.stdout != girls.stdout  # the default guides, as serving does
    bad = run_module("training", "sample", conditional_checkpoint, "--decade", "1955")
    assert bad.returncode == 2 and "--decade 1955: not among the model's values (1920, 2010)" in bad.stderr


def test_conditional_export_has_a_condition_input_and_the_conditions_in_its_metadata(conditional_registry):
    conditional = conditional_registry / "mlp-conditional" / read_latest(conditional_registry, "mlp-conditional")
    plain = conditional_registry / "mlp" / read_latest(conditional_registry, "mlp")
    graph = onnx.load(conditional / ONNX_FILE)
    assert [i.name for i in graph.graph.input] == ["context", "condition"]
    assert [d.dim_value for d in graph.graph.input[1].type.tensor_type.shape.dim[1:]] == [2]
    metadata = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(metadata["conditions"])[0] == {"name": "sex", "values": ["F", "M"]}
    manifest = read_manifest(conditional)
    assert manifest.conditions == (("sex", ("F", "M")), ("decade", ("1920", "2010")))
    assert len(manifest.condition_prior) == 4 and manifest.raw["parity"]["onnx_max_abs_logit_diff"] <= 1e-4
    # an unconditional model keeps one input and the manifest it had
    assert [i.name for i in onnx.load(plain / ONNX_FILE).graph.input] == ["context"]
    assert "conditions" not in read_manifest(plain).raw and read_manifest(plain).conditions == ()



def test_export_writes_the_default_guidance_of_conditional_models_only(conditional_registry, trained_checkpoints,
                                                                       conditional_checkpoint, tmp_path):
    conditional = conditional_registry / "mlp-conditional" / read_latest(conditional_registry, "mlp-conditional")
    assert read_manifest(conditional).guidance == DEFAULT_GUIDANCE
    for checkpoint, value, words in [(trained_checkpoints["mlp"], "1", "trained without conditions"),
                                     (conditional_checkpoint, "21", "must be <= 20")]:
        refused = run_module("export", checkpoint, "--registry", tmp_path, "--guidance", value)
        assert refused.returncode == 2 and words in refused.stderr and len(refused.stderr.splitlines()) == 1, \
            refused.stderr
    assert not list(tmp_path.iterdir())  # refused before anything was written

@pytest.fixture(scope="module")
def conditional_server(conditional_registry):
    from conftest import ServerProcess

    server = ServerProcess(conditional_registry, default_model="mlp-conditional")
    server.wait_ready()
    yield server.url
    server.stop()


def test_generate_takes_sex_and_decade_and_422s_what_the_model_cannot_take(conditional_server):
    url = conditional_server + "/v1/generate"
    answers = {body: httpx.post(url, json={"n": 20, "seed": 4, **dict(body)}).json()["names"]
               for body in [(), (("sex", "F"),), (("sex", "M"), ("decade", 1920))]}
    assert len({json.dumps(names) for names in answers.values()}) == 3
    again = httpx.post(url, json={"n": 20, "seed": 4, "sex": "M", "decade": 1920}).json()["names"]
    assert again == answers[(("sex", "M"), ("decade", 1920))]
    for body, field, text in [({"sex": "X"}, "sex", "F, M"), ({"decade": 1950}, "decade", "1920, 2010"),
                              ({"conditions": {"region": "north"}}, "conditions", "its conditions: sex, decade"),
                              ({"model": "mlp", "sex": "F"}, "sex", "trained without conditions")]:
        response = httpx.post(url, json={"n": 2, **body})
        assert response.status_code == 422, response.text
        detail = response.json()["detail"][0]
        assert detail["loc"][:2] == ["body", field] and text in detail["msg"]


def test_models_list_conditions_and_score_explains_them(conditional_server):
    models = {m["name"]: m for m in httpx.get(conditional_server + "/v1/models").json()["models"]}
    assert models["mlp-conditional"]["conditions"] == {"sex": ["F", "M"], "decade": ["1920", "2010"]}
    assert models["mlp"]["conditions"] == {}
    url = conditional_server + "/v1/score"
    results = httpx.post(url, json={"names": ["emma", "john"], "explain": True}).json()["results"]
    for result in results:
        assert set(result["posterior"]) == {"sex", "decade"}
        assert abs(sum(result["posterior"]["sex"].values()) - 1) < 1e-9
        assert result["most_likely"]["sex"] == max(result["posterior"]["sex"], key=result["posterior"]["sex"].get)
    fixed = httpx.post(url, json={"names": ["emma"], "explain": True, "decade": 2010}).json()["results"][0]
    assert fixed["posterior"]["decade"] == {"2010": pytest.approx(1.0)}
    girl = httpx.post(url, json={"names": ["emma"], "sex": "F"}).json()["results"][0]["nll"]
    boy = httpx.post(url, json={"names": ["emma"], "sex": "M"}).json()["results"][0]["nll"]
    assert girl != boy
    refused = httpx.post(url, json={"names": ["emma"], "explain": True, "model": "mlp"})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "explain"]


@pytest.mark.parametrize("model_type, sizes", [("bigram-neural", {}), ("wavenet", dict(block_size=4, n_embd=8, n_hidden=16))])
def test_every_model_with_a_context_trains_and_exports_with_conditions(tmp_path, records_file, model_type, sizes):
    from export.pipeline import export_checkpoint
    from training.models import ModelConfig
    from training.train import TRAIN_DEFAULTS, train

    data = load_dataset(str(records_file), None, ("sex", "decade"))
    tc = TRAIN_DEFAULTS[model_type].__class__(**{**TRAIN_DEFAULTS[model_type].__dict__, "steps": 60, "eval_every": 60})
    meta = train(ModelConfig(model_type, data.vocab.size, conditions=data.conditions.sizes, **sizes), tc, data,
                 tmp_path / model_type, progress=False)
    assert meta["metrics"]["val_nll"] < 3.29  # below uniform over 27 characters
    published = export_checkpoint(tmp_path / model_type, tmp_path / "registry")  # parity checked
    assert [i.name for i in onnx.load(published.path / ONNX_FILE).graph.input] == ["context", "condition"]


def test_an_ensemble_of_conditional_members_is_conditional(tmp_path, records_file, conditional_checkpoint):
    from training.models import ModelConfig
    from training.train import TrainConfig, train
    from conftest import TINY_CONDITIONAL

    data = load_dataset(str(records_file), None, ("sex", "decade"))
    train(ModelConfig("mlp", data.vocab.size, conditions=data.conditions.sizes, **TINY_CONDITIONAL),
          TrainConfig(steps=100, batch_size=64, lr=3e-3, optimizer="adamw", seed=2, eval_every=100), data,
          tmp_path / "second", progress=False)
    done = run_module("training", "ensemble", conditional_checkpoint, tmp_path / "second", "--out", tmp_path / "ens")
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "ens" / "checkpoint.json").read_text())
    assert meta["model_config"]["conditions"] == [3, 3] and meta["conditions"][0]["name"] == "sex"
    sampled = run_module("training", "sample", tmp_path / "ens", "--sex", "F", "--seed", "1", "-n", "5")
    assert sampled.returncode == 0 and len(sampled.stdout.split()) == 5, sampled.stderr



def test_guidance_leans_names_to_the_asked_sex_and_is_a_422_where_it_cannot_apply(conditional_server):
    # In the SSA records girls' names end in "a" far more often than boys'; guidance (logits(c) + w *
    # (logits(c) - logits(any))) sharpens what sets a sex apart, so the gap between the asked sexes widens.
    url = conditional_server + "/v1/generate"

    def ending_in_a(sex, guidance):
        names = httpx.post(url, json={"n": 600, "seed": 1, "sex": sex, "guidance": guidance}).json()["names"]
        return sum(entry["name"].endswith("a") for entry in names) / len(names)

    plain, guided = [ending_in_a("F", g) - ending_in_a("M", g) for g in (0, 4)]
    assert 0 < plain < guided, (plain, guided)
    models = {m["name"]: m for m in httpx.get(conditional_server + "/v1/models").json()["models"]}
    assert models["mlp-conditional"]["guidance"] == DEFAULT_GUIDANCE  # what export writes by default
    assert models["mlp"]["guidance"] == 0.0
    default = httpx.post(url, json={"n": 30, "seed": 2, "sex": "F"}).json()["names"]
    assert default == httpx.post(url, json={"n": 30, "seed": 2, "sex": "F", "guidance": DEFAULT_GUIDANCE}).json()["names"]
    assert default != httpx.post(url, json={"n": 30, "seed": 2, "sex": "F", "guidance": 0}).json()["names"]
    # Nothing named, nothing to guide: the same names at any scale.
    assert httpx.post(url, json={"n": 30, "seed": 2}).json() == httpx.post(url, json={"n": 30, "seed": 2,
                                                                                     "guidance": 9}).json()
    for body, text in [({"guidance": 21}, "less than or equal to 20"), ({"guidance": -1}, "greater than or equal"),
                       ({"guidance": "2"}, "valid number"),
                       ({"model": "mlp", "guidance": 1.5}, "trained without conditions")]:
        response = httpx.post(url, json={"n": 2, **body})
        assert response.status_code == 422, response.text
        detail = response.json()["detail"][0]
        assert detail["loc"][:2] == ["body", "guidance"] and text in detail["msg"], detail


def test_conditions_left_out_are_the_models_exact_marginal_in_score_and_generate(conditional_server,
                                                                                 conditional_registry):
    # "any" is sum over c of p(c) p(name | c), p(c) the training prior: scored exactly, and generated by
    # drawing c per name from the prior, then the name under c (the answer says which c).
    manifest = read_manifest(conditional_registry / "mlp-conditional" /
                             read_latest(conditional_registry, "mlp-conditional"))
    prior = {tuple(v[i - 1] for (_, v), i in zip(manifest.conditions, combo)): p
             for combo, p in manifest.condition_prior}
    score = conditional_server + "/v1/score"
    names = ["emma", "john", "zyx"]

    def nlls(**conditions):
        return [r["nll"] for r in httpx.post(score, json={"names": names, **conditions}).json()["results"]]

    under = {combo: nlls(sex=combo[0], decade=int(combo[1])) for combo in prior}
    for i, result in enumerate(httpx.post(score, json={"names": names}).json()["results"]):
        exact = -math.log(sum(p * math.exp(-under[combo][i]) for combo, p in prior.items()))
        assert result["nll"] == pytest.approx(exact, abs=1e-6)
        assert -sum(math.log(c["p"]) for c in result["chars"]) == pytest.approx(exact, abs=1e-6)
    girls = nlls(sex="F")
    for i in range(len(names)):  # sex given, decade marginalised under p(decade | F)
        weights = {combo: p for combo, p in prior.items() if combo[0] == "F"}
        exact = -math.log(sum(p * math.exp(-under[c][i]) for c, p in weights.items()) / sum(weights.values()))
        assert girls[i] == pytest.approx(exact, abs=1e-6)

    answer = httpx.post(conditional_server + "/v1/generate", json={"n": 3000, "seed": 3}).json()["names"]
    drawn = Counter((entry["conditions"]["sex"], entry["conditions"]["decade"]) for entry in answer)
    for combo, p in prior.items():  # each combination as often as the prior says, within 4 sigma
        assert abs(drawn[combo] - 3000 * p) < 4 * math.sqrt(3000 * p * (1 - p)) + 1, (combo, drawn, prior)
    sample = answer[:40]
    for entry in sample:  # the NLL is the name's under the conditions it was drawn with
        c = entry["conditions"]
        scored = httpx.post(score, json={"names": [entry["name"]], "sex": c["sex"], "decade": int(c["decade"])})
        assert scored.json()["results"][0]["nll"] == pytest.approx(entry["nll"], abs=1e-4)
    girls_any_decade = httpx.post(conditional_server + "/v1/generate", json={"n": 200, "seed": 3, "sex": "F"}).json()
    assert {e["conditions"]["sex"] for e in girls_any_decade["names"]} == {"F"}
    assert {e["conditions"]["decade"] for e in girls_any_decade["names"]} == {"1920", "2010"}
    named = httpx.post(conditional_server + "/v1/generate", json={"n": 5, "sex": "F", "decade": 1920}).json()
    assert all("conditions" not in e for e in named["names"])  # nothing drawn, nothing to say

def test_sdk_and_cli_take_sex_decade_and_explain(conditional_server):
    from clients import BadRequestError, NameGenClient

    direct = httpx.post(conditional_server + "/v1/generate", json={"n": 5, "seed": 7, "sex": "F", "decade": 2010})
    with NameGenClient(conditional_server) as client:
        assert [g.name for g in client.generate(5, seed=7, sex="F", decade=2010).names] == \
            [entry["name"] for entry in direct.json()["names"]]
        explained = client.score(["emma"], explain=True).results[0]
        assert set(explained.most_likely) == {"sex", "decade"} and explained.posterior["sex"]
        assert {m.name: m.conditions for m in client.models().models}["mlp-conditional"]["sex"] == ["F", "M"]
        with pytest.raises(BadRequestError):
            client.generate(2, sex="X")
    table = run_module("clients", "score", "emma", "--explain", "--url", conditional_server, timeout=60)
    assert table.returncode == 0 and explained.most_likely["decade"] in table.stdout, table.stderr
    refused = run_module("clients", "generate", "--decade", "1955", "--url", conditional_server, timeout=60)
    assert refused.returncode == 2 and "1920, 2010" in refused.stderr
    direct = httpx.post(conditional_server + "/v1/generate", json={"n": 5, "seed": 7, "sex": "F", "guidance": 0}).json()
    with NameGenClient(conditional_server) as client:
        assert client.generate(5, seed=7, sex="F", guidance=0).raw == direct
        assert {m.name: m.guidance for m in client.models().models}["mlp-conditional"] == DEFAULT_GUIDANCE
    unguided = run_module("clients", "generate", "--sex", "F", "--guidance", "0", "-n", "5", "--seed", "7", "--json",
                          "--url", conditional_server, timeout=60)
    assert unguided.returncode == 0 and json.loads(unguided.stdout) == direct, unguided.stderr


def test_an_interrupted_conditional_run_resumes_bit_identical(tmp_path, records_file):
    # Condition dropout draws from the global generator: resuming must restore it.
    args = ["--n-embd", "8", "--n-hidden", "32", "--steps", "2000", "--eval-every", "100", "--seed", "3",
            "--data", str(records_file), "--condition", "sex,decade", "--condition-dropout-all", "0.2", "--quiet",
            "--no-plots"]
    straight = run_module("training", "train", *args, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    out = tmp_path / "interrupted"
    interrupt_training(args, out)
    assert 0 < json.loads((out / "checkpoint.json").read_text())["training"]["completed_steps"] < 2000
    resumed = run_module("training", "train", "--out", out, "--resume", "--quiet", "--no-plots")
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "straight" / "model.safetensors").read_bytes()
