"""The SDK, the CLI and the load generator against the real server (`live_server`: `python -m serving` on an
ephemeral 127.0.0.1 port with a tiny `mlp`, the default, and a `bigram-counts` model)."""
import asyncio
import json
import math
import shutil
import subprocess

import pytest

from clients import AsyncNameGenClient, BadRequestError, Generation, NameGenClient
from clients.loadgen import run_load
from conftest import ROOT, apt_install, run_module


@pytest.fixture(scope="module")
def client(live_server):
    with NameGenClient(live_server) as client:
        yield client


def namegen(*args, url: str) -> subprocess.CompletedProcess:
    return run_module("clients", *args, "--url", url, timeout=60)


def test_generate_returns_n_names_from_the_default_model_and_echoes_the_seed(client):
    result = client.generate(5, seed=42)
    assert isinstance(result, Generation) and result.seed == 42
    assert result.model == client.models().default == "mlp" and result.version
    assert len(result.names) == 5
    assert all(g.name and math.isfinite(g.nll) and g.nll > 0 for g in result.names)


def test_the_same_seed_gives_the_same_names_and_no_seed_gets_one_echoed(client):
    assert client.generate(8, seed=7).names == client.generate(8, seed=7).names
    unseeded = client.generate(8)
    assert client.generate(8, seed=unseeded.seed).names == unseeded.names


def test_generate_honours_prefix_unique_and_model(client):
    result = client.generate(10, seed=3, prefix="ka", unique=True, model="bigram-counts")
    assert result.model == "bigram-counts"
    names = [g.name for g in result.names]
    assert len(set(names)) == 10 and all(name.startswith("ka") for name in names)


def test_score_gives_each_character_and_a_consistent_total(client):
    scores = client.score(["emma", "zzzq"])
    emma, zzzq = scores.results
    assert (emma.name, zzzq.name) == ("emma", "zzzq") and scores.model == "mlp"
    assert emma.nll < zzzq.nll  # a common name is likelier than a keyboard mash
    for s in scores.results:
        assert [c.char for c in s.chars] == list(s.name) + ["."]
        assert s.nll == pytest.approx(sum(c.nll for c in s.chars), rel=1e-3)
        assert s.perplexity == pytest.approx(math.exp(s.nll_per_char), rel=1e-3)
        assert all(c.p == pytest.approx(math.exp(-c.nll), rel=1e-3) for c in s.chars)


def test_models_lists_both_models_with_their_metrics(client):
    listing = client.models()
    by_name = {m.name: m for m in listing.models}
    assert listing.default == "mlp" and {"mlp", "bigram-counts"} <= by_name.keys()
    mlp = by_name["mlp"]
    assert "." in mlp.vocab and mlp.block_size >= 1 and mlp.backend and mlp.device
    assert {"train_nll", "val_nll", "test_nll"} <= mlp.metrics.keys()


def test_health_is_ready_with_every_model_loaded(client):
    health = client.health()
    assert health.ready and health.status == "ready"
    assert {"mlp", "bigram-counts"} <= health.models.keys()


def test_async_client_answers_as_the_sync_one_does(live_server, client):
    async def all_calls():
        async with AsyncNameGenClient(live_server) as aclient:
            return await asyncio.gather(aclient.generate(5, seed=42), aclient.score(["emma"]), aclient.models(),
                                        aclient.health())

    generated, scores, listing, health = asyncio.run(all_calls())
    assert generated.names == client.generate(5, seed=42).names
    assert scores.results == client.score(["emma"]).results
    assert listing.default == "mlp" and health.ready


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_invalid_field_is_a_422_naming_it(live_server, kind):
    async def async_generate():
        async with AsyncNameGenClient(live_server) as aclient:
            await aclient.generate(0)

    with pytest.raises(BadRequestError) as raised:
        if kind == "sync":
            with NameGenClient(live_server) as sync_client:
                sync_client.generate(0)
        else:
            asyncio.run(async_generate())
    assert (raised.value.status, raised.value.field) == (422, "n") and raised.value.message


def test_an_unknown_model_is_a_404_naming_the_model(client):
    with pytest.raises(BadRequestError) as raised:
        client.score(["emma"], model="no-such-model")
    assert raised.value.status == 404 and "no-such-model" in raised.value.message


def test_load_generator_against_the_real_server(live_server):
    report = asyncio.run(run_load(live_server, concurrency=4, requests=40, n=[1, 5], seeded=0.5,
                                  model=["mlp", "bigram-counts"], warmup=4))
    assert (report.requests, report.ok, report.errors) == (40, 40, {})
    assert report.requests_per_s > 0 and report.latency_ms["p50"] <= report.latency_ms["max"]


# The CLI, as a user runs it.

def test_cli_seeded_generate_prints_the_same_names_twice(live_server):
    first = namegen("generate", "-n", "5", "--seed", "42", url=live_server)
    again = namegen("generate", "-n", "5", "--seed", "42", url=live_server)
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.splitlines()) == 5 and first.stdout == again.stdout
    assert first.stderr == ""  # the seed goes to stderr only when the server picked it


def test_cli_generate_takes_every_sampling_option(live_server):
    result = namegen("generate", "-n", "5", "--seed", "1", "--prefix", "ka", "--temperature", "0.8", "--top-k", "5",
                     "--unique", "--novel", url=live_server)
    assert result.returncode == 0, result.stderr
    names = result.stdout.split()
    assert len(set(names)) == 5 and all(name.startswith("ka") for name in names)


def test_cli_unseeded_generate_tells_the_seed_on_stderr(live_server):
    result = namegen("generate", "-n", "2", url=live_server)
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 2
    assert result.stderr.startswith("seed ") and int(result.stderr.split()[1]) >= 0


def test_cli_show_nll_adds_a_column(live_server):
    result = namegen("generate", "-n", "4", "--seed", "42", "--show-nll", url=live_server)
    plain = namegen("generate", "-n", "4", "--seed", "42", url=live_server)
    rows = [line.split() for line in result.stdout.splitlines()]
    assert [row[0] for row in rows] == plain.stdout.split()
    assert all(len(row) == 2 and float(row[1]) > 0 for row in rows)


def test_cli_generate_json_is_the_servers_response(live_server):
    result = namegen("generate", "-n", "3", "--seed", "42", "--json", url=live_server)
    body = json.loads(result.stdout)
    assert body["seed"] == 42 and len(body["names"]) == 3 and {"model", "version"} <= body.keys()


def test_cli_score_prints_a_row_per_name(live_server):
    result = namegen("score", "emma", "zzzq", url=live_server)
    assert result.returncode == 0, result.stderr
    assert "NLL/char" in result.stdout and "perplexity" in result.stdout
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()
            if line.split()[:1] in (["emma"], ["zzzq"])}
    assert rows.keys() == {"emma", "zzzq"} and all(len(cells) == 3 for cells in rows.values())
    assert float(rows["emma"][0]) < float(rows["zzzq"][0])


def test_cli_score_details_shows_each_characters_probability(live_server):
    result = namegen("score", "emma", "--details", url=live_server)
    assert result.returncode == 0, result.stderr
    char_rows = [line.split() for line in result.stdout.splitlines()
                 if len(line.split()) == 3 and line.split()[0] in ("e", "m", "a", ".")]
    assert [row[0] for row in char_rows] == ["e", "m", "m", "a", "."]
    assert all(0 < float(row[1]) <= 1 for row in char_rows)


def test_cli_score_json_parses(live_server):
    body = json.loads(namegen("score", "emma", "zzzq", "--json", url=live_server).stdout)
    assert [r["name"] for r in body["results"]] == ["emma", "zzzq"]


def test_cli_models_and_health(live_server):
    models = namegen("models", url=live_server)
    assert models.returncode == 0 and "mlp (default)" in models.stdout and "bigram-counts" in models.stdout
    health = namegen("health", url=live_server)
    assert health.returncode == 0 and health.stdout.startswith("ready\n")


@pytest.mark.parametrize("args, message", [
    (["generate", "-n", "0"], "HTTP 422: n: "),
    (["generate", "--model", "no-such-model"], "HTTP 404: "),
])
def test_cli_a_4xx_exits_2_with_the_servers_message_on_one_line(live_server, args, message):
    result = namegen(*args, url=live_server)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: " + message)


def test_cli_bench_prints_its_report_and_writes_json(live_server, tmp_path):
    out = tmp_path / "bench.json"
    result = namegen("bench", "--requests", "30", "-c", "4", "-n", "5", "--warmup", "4", "--json-out", out,
                     url=live_server)
    assert result.returncode == 0, result.stderr
    assert "req/s" in result.stdout and "names/s" in result.stdout and "p99" in result.stdout
    report = json.loads(out.read_text())
    assert (report["requests"], report["ok"], report["errors"]) == (30, 30, {})
    assert report["names_per_s"] == pytest.approx(5 * report["requests_per_s"])


def bench_report(*args, url: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    result = namegen("bench", *args, "--json", url=url)
    return result, json.loads(result.stdout) if result.stdout else None


def test_cli_bench_counts_every_name_the_real_server_sent(live_server):
    result, report = bench_report("--requests", "20", "-c", "3", "-n", "7", "--warmup", "3", url=live_server)
    assert result.returncode == 0, result.stderr
    assert (report["requests"], report["ok"], report["names"], report["errors"]) == (20, 20, 140, {})


def test_cli_bench_counts_the_real_servers_refusals_by_status(live_server):
    result, report = bench_report("--requests", "30", "-c", "3", "-n", "2", "--model", "mlp",
                                  "--model", "no-such-model", url=live_server)
    assert result.returncode == 0, result.stderr
    assert report["errors"].keys() == {"404"} and report["ok"] > 0
    assert report["ok"] + report["errors"]["404"] == 30 and report["names"] == 2 * report["ok"]


def test_cli_bench_exits_1_with_one_line_when_the_real_server_refuses_every_request(live_server):
    result, report = bench_report("--requests", "4", "-c", "2", "-n", "10001", url=live_server)
    assert result.returncode == 1 and report["errors"] == {"422": 4}
    assert result.stderr == f"error: none of 4 requests to {live_server} succeeded (422 x4)\n"


def test_namegen_bench_and_wrk_count_the_same_server_alike(live_server):
    """Not a speed test: two independent load generators measuring one server in turn agree within a loose
    factor (a busy shared machine moves single runs by 2x or more); one counting requests as names, or a
    name per answer, is off by 200x."""
    if shutil.which("wrk") is None:
        apt_install(["wrk"], ["wrk"])
    wrk = subprocess.run(["wrk", "-t1", "-c4", "-d2s", "--timeout", "30s", "-s", str(ROOT / "bench" / "wrk_post.lua"),
                          live_server + "/v1/generate", "--", '{"n":200}'], capture_output=True, text=True, timeout=60)
    counted = json.loads(next(x for x in wrk.stdout.splitlines() if x.startswith("wrk-json ")).split(" ", 1)[1])
    assert counted["non_2xx_3xx"] == 0 and counted["requests"] > 0, wrk.stdout
    wrk_names_per_s = 200 * counted["requests"] / (counted["duration_us"] / 1e6)
    result, report = bench_report("-c", "4", "-n", "200", "--duration", "2", "--warmup", "4", url=live_server)
    assert result.returncode == 0 and report["errors"] == {}, result.stderr
    assert 1 / 5 < report["names_per_s"] / wrk_names_per_s < 5


def test_sdk_and_cli_say_when_fewer_names_came_back_than_asked(client, live_server):
    # Greedy sampling yields one name, so five unique ones exhaust the attempt budget.
    short = client.generate(5, seed=1, temperature=0, unique=True)
    assert short.exhausted and len(short.names) == 1
    assert not client.generate(5, seed=1).exhausted
    result = namegen("generate", "-n", "5", "--seed", "1", "--temperature", "0", "--unique", url=live_server)
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 1
    assert result.stderr.startswith("note: only 1 names passed") and len(result.stderr.splitlines()) == 1
