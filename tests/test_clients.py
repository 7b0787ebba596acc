"""Client pieces that need no server: the retry schedule, Retry-After, error shapes, the CLI's arguments
and exit codes, and that `clients` stays installable on its own."""
import ast
import random
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from clients.cli import main
from clients.errors import BadRequestError, ServerError, TooManyRequestsError, error_from_response, field_from_loc
from clients.loadgen import percentile
from clients.render import plain_table
from clients.retry import RetryPolicy, parse_retry_after
from clients.sdk import DEFAULT_URL, resolve_base_url
from conftest import ROOT, run_module
from scripted_server import Answer, ScriptedServer, closed_port_url, in_order

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("header, seconds", [
    ("3", 3.0), (" 0 ", 0.0), ("1.5", 1.5), ("-4", 0.0),
    (format_datetime(NOW + timedelta(seconds=30), usegmt=True), 30.0),
    ("Sun, 01 Jun 2025 12:00:10 GMT", 10.0),
    (format_datetime(NOW - timedelta(minutes=5), usegmt=True), 0.0),  # already past: go now
    (None, None), ("", None), ("soon", None), ("nan", None),
])
def test_retry_after_is_read_as_seconds_or_as_an_http_date(header, seconds):
    assert parse_retry_after(header, now=NOW) == seconds


def test_backoff_grows_exponentially_up_to_its_cap_and_is_jittered():
    policy = RetryPolicy(backoff_base=0.25, backoff_max=4.0)
    rng = random.Random(0)
    for retry, cap in [(1, 0.25), (2, 0.5), (3, 1.0), (4, 2.0), (5, 4.0), (6, 4.0), (30, 4.0)]:
        waits = [policy.backoff(retry, rng) for _ in range(200)]
        assert all(0 <= w <= cap for w in waits)
        assert max(waits) > 0.8 * cap and min(waits) < 0.2 * cap  # spread over the whole range


def test_retry_after_is_honoured_with_no_more_than_backoff_base_of_jitter_on_top():
    policy = RetryPolicy(backoff_base=0.25)
    waits = [policy.wait(1, 2.0, random.Random(seed)) for seed in range(100)]
    assert all(2.0 <= w <= 2.25 for w in waits) and len(set(waits)) > 1


def test_the_default_policy_cannot_wait_longer_than_its_time_budget():
    policy = RetryPolicy()
    worst = sum(min(policy.backoff_max, policy.backoff_base * 2 ** (k - 1)) for k in range(1, policy.max_attempts))
    assert worst <= policy.max_elapsed


def _response(status: int, **kwargs) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("POST", "http://h/v1/generate"), **kwargs)


def test_each_status_class_becomes_its_own_exception():
    assert type(error_from_response(_response(404, json={"detail": "x"}))) is BadRequestError
    assert type(error_from_response(_response(429, json={"detail": "x"}))) is TooManyRequestsError
    assert type(error_from_response(_response(504, json={"detail": "x"}))) is ServerError


def test_a_non_json_error_body_falls_back_to_its_text_or_the_reason_phrase():
    assert error_from_response(_response(413, text="body too large\n")).message == "body too large"
    assert error_from_response(_response(500, content=b"")).message == "Internal Server Error"


@pytest.mark.parametrize("loc, field", [
    (["body", "n"], "n"), (["body", "names", 3], "names[3]"), (["body"], None), (["query", "x", "y"], "x.y"),
    ([], None),
])
def test_field_is_the_request_path_the_server_blamed(loc, field):
    assert field_from_loc(loc) == field


def test_base_url_argument_beats_namegen_url_which_beats_the_default(monkeypatch):
    monkeypatch.delenv("NAMEGEN_URL", raising=False)
    assert resolve_base_url() == DEFAULT_URL
    monkeypatch.setenv("NAMEGEN_URL", "https://names.example/api/")
    assert resolve_base_url() == "https://names.example/api"
    assert resolve_base_url("http://10.0.0.1:9000") == "http://10.0.0.1:9000"
    with pytest.raises(ValueError, match="must start with http:// or https://"):
        resolve_base_url("localhost:8000")


def test_percentile_is_the_nearest_rank():
    values = list(range(1, 101))
    assert [percentile(values, q) for q in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert percentile([7.0], 99) == 7.0 and percentile([], 50) is None


def test_plain_table_aligns_text_left_and_numbers_right():
    text = plain_table(["name", "NLL"], [["emma", "6.02"], ["zzzq", "19.62"]], numeric=[False, True])
    assert text.splitlines() == ["name    NLL", "----  -----", "emma   6.02", "zzzq  19.62"]


@pytest.mark.parametrize("argv, message", [
    ([], "required: command"),
    (["fly"], "invalid choice: 'fly'"),
    (["generate", "-n", "abc"], "argument -n: invalid int value: 'abc'"),
    (["generate", "--temperature", "hot"], "invalid float value: 'hot'"),
    (["score"], "required: names"),
    (["bench", "-c", "0"], "argument -c/--concurrency: must be > 0, got 0"),
    (["bench", "--duration", "nan"], "argument --duration: must be > 0, got nan"),
    (["bench", "--seeded", "1.5"], "must be a fraction from 0 to 1"),
    (["bench", "-n", "1,x"], "argument -n: 'x' is not a valid int"),
    (["bench", "-n", "0"], "argument -n: must be > 0, got 0"),
    (["bench", "--requests", "0"], "argument --requests: must be > 0, got 0"),
    (["bench", "--warmup", "-1"], "argument --warmup: must be >= 0, got -1"),
    (["bench", "--url", "ftp://localhost:8000"], "url 'ftp://localhost:8000' must start with http:// or https://"),
    (["models", "--timeout", "-1"], "argument --timeout: must be > 0"),
    (["health", "--url", "localhost:8000"], "url 'localhost:8000' must start with http:// or https://"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_url_works_before_and_after_the_command(capsys):
    with ScriptedServer(in_order(Answer(200, {"status": "ready", "models": {"mlp": "3"}}))) as server:
        for argv in (["--url", server.url, "health"], ["health", "--url", server.url]):
            assert main(argv) == 0
            assert capsys.readouterr().out == "ready\n  mlp 3\n"
    assert len(server.received) == 2


def test_a_closed_port_exits_1_with_one_line_naming_the_url():
    url = closed_port_url()
    result = run_module("clients", "generate", "-n", "3", "--url", url, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: cannot reach {url}") and "attempts" in result.stderr


def test_namegen_console_script_is_installed():
    script = Path(sys.executable).with_name("namegen")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "generate" in result.stdout and "bench" in result.stdout


def test_clients_imports_only_httpx_rich_and_the_standard_library():
    # namegen (the shared contract and CLI conventions) is allowed because it imports only the standard library.
    def top_level_imports(folder):
        imported = set()
        for path in (ROOT / folder).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    imported.add(node.module.split(".")[0])
        return imported

    assert top_level_imports("namegen") - set(sys.stdlib_module_names) == set()
    allowed = set(sys.stdlib_module_names) | {"httpx", "rich", "namegen"}
    assert top_level_imports("clients") - allowed == set()
