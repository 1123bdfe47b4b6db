"""The LLM judge's http backend against a real OpenAI-style server on 127.0.0.1, started by the test."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from spa_recipes.errors import UserError
from spa_recipes.judges.config import LLMJudgeConfig
from spa_recipes.judges.llm_judge import LLMJudge

TEMPLATE = "Q: {instruction}\nFIRST: {response_a}\nSECOND: {response_b}\nA or B?"


class FakeServer:
    """Answers /v1/chat/completions with ``reply(prompt_text, attempt) -> (status, body or None, delay)``.

    Records every request, the headers, and the most requests it was handling at once.
    """

    def __init__(self, reply: Callable[[str, int], tuple[int, str | None, float]]) -> None:
        self.reply = reply
        self.requests: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.active = self.max_active = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text = body["messages"][0]["content"]
                with server.lock:
                    attempt = server.requests.count(text)
                    server.requests.append(text)
                    server.headers.append(dict(self.headers))
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                try:
                    status, content, delay = server.reply(text, attempt)
                    time.sleep(delay)
                finally:
                    # Done "thinking" before the answer goes out: once the client reads it, it may send its next
                    # request, which must not find this one still counted.
                    with server.lock:
                        server.active -= 1
                try:
                    payload = (
                        json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
                        if content is not None
                        else "not json"
                    ).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def start(reply: Callable[[str, int], tuple[int, str | None, float]]) -> FakeServer:
        servers.append(FakeServer(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def first_of(text: str) -> str:
    return text.split("FIRST: ")[1].split("\n")[0]


def second_of(text: str) -> str:
    return text.split("SECOND: ")[1].split("\n")[0]


def prefers_good(text: str) -> str:
    return "A" if "good" in first_of(text) else "B"


def make_judge(server: FakeServer, **cfg: object) -> LLMJudge:
    settings = {
        "backend": "http",
        "base_url": server.url,
        "model": "judge",
        "template": TEMPLATE,
        "timeout": 2.0,
        "retry_backoff": 0.01,
        **cfg,
    }
    return LLMJudge(LLMJudgeConfig(**settings))


def rows(*pairs: tuple[str, str]) -> list[dict]:
    return [
        {"id": str(i), "prompt": [{"role": "user", "content": "w1"}], "responses": list(pair)}
        for i, pair in enumerate(pairs)
    ]


def test_http_judge_asks_both_orders_and_reads_strict_answers(serve) -> None:
    server = serve(lambda text, attempt: (200, prefers_good(text), 0.0))
    judge = make_judge(server)
    judged = judge.score(rows(("bad one", "good one"), ("good two", "bad two")))
    assert [r["scores"] for r in judged] == [[0.0, 1.0], [1.0, 0.0]]
    assert all(r["valid"] == [True, True] and r["order_disagreement"] is False for r in judged)
    assert len(server.requests) == 4  # two rows, two orders each
    assert {(first_of(t), second_of(t)) for t in server.requests} == {
        ("bad one", "good one"),
        ("good one", "bad one"),
        ("good two", "bad two"),
        ("bad two", "good two"),
    }
    assert judge.stats["http_requests"] == 4 and judge.stats["order_disagreements"] == 0


def test_position_bias_is_cancelled_and_counted(serve) -> None:
    server = serve(lambda text, attempt: (200, "A", 0.0))  # always the first response
    judge = make_judge(server)
    judged = judge.score(rows(("x", "y"), ("p", "q")))
    assert [r["scores"] for r in judged] == [[0.5, 0.5], [0.5, 0.5]]  # a tie, not a preference
    assert all(r["order_disagreement"] for r in judged)
    assert judge.stats["order_disagreements"] == 2 and judge.stats["order_disagreement_rate"] == 1.0
    # Asked in one order only, the same server's bias becomes a (wrong) preference: what swapping prevents.
    single = make_judge(server, swap_positions=False).score(rows(("x", "y")))
    assert single[0]["scores"] == [1.0, 0.0]


def test_malformed_answers_are_invalid(serve) -> None:
    answers = {"x": "A.", "p": "Response A", "u": None, "m": "  B\n"}  # keyed by the first response shown

    def reply(text: str, attempt: int) -> tuple[int, str | None, float]:
        return 200, answers.get(first_of(text), "A"), 0.0

    judge = make_judge(server := serve(reply), max_retries=0)
    judged = judge.score(rows(("x", "y"), ("p", "q"), ("u", "v"), ("m", "n")))
    assert [r["valid"] for r in judged] == [[False, False]] * 3 + [[True, True]]
    assert judged[3]["scores"] == [0.0, 1.0]  # "  B\n" is B; "n" first answers "A": second is better both ways
    assert judge.stats["http_unparsable_answers"] == 3 and judge.stats["invalid_comparisons"] == 3
    assert len(server.requests) == 8  # an unparsable answer is not retried


def test_server_errors_are_retried_then_succeed(serve) -> None:
    def reply(text: str, attempt: int) -> tuple[int, str | None, float]:
        return (503, "", 0.0) if attempt < 2 else (200, prefers_good(text), 0.0)

    server = serve(reply)
    judge = make_judge(server, max_retries=2)
    judged = judge.score(rows(("good", "bad")))
    assert judged[0]["valid"] == [True, True] and judged[0]["scores"] == [1.0, 0.0]
    assert len(server.requests) == 6 and judge.stats["http_retries"] == 4 and judge.stats["http_failed_requests"] == 0
    # One retry fewer than needed: the comparison is invalid, not guessed.
    failing = make_judge(serve(reply), max_retries=1)
    assert failing.score(rows(("good", "bad")))[0]["valid"] == [False, False]
    assert failing.stats["http_failed_requests"] == 2


def test_timeouts_are_retried_and_then_invalid(serve) -> None:
    def reply(text: str, attempt: int) -> tuple[int, str | None, float]:
        slow = "slow" in first_of(text) + second_of(text)
        return 200, prefers_good(text), (2.0 if slow and attempt < 1 else 0.0)

    # Margins wide enough for a loaded 2-core machine: a quick answer well inside the timeout, a slow one far past it.
    server = serve(reply)
    judge = make_judge(server, timeout=0.5, max_retries=1)
    start = time.monotonic()
    judged = judge.score(rows(("good slow", "bad"), ("good", "bad")))
    assert time.monotonic() - start < 5.0
    assert judged[0]["valid"] == [True, True] and judged[0]["scores"] == [1.0, 0.0]  # second attempt is quick
    assert judge.stats["http_retries"] == 2
    never = make_judge(serve(lambda text, attempt: (200, "A", 2.0)), timeout=0.5, max_retries=1)
    assert never.score(rows(("a", "b")))[0]["valid"] == [False, False]
    assert never.stats["http_failed_requests"] == 2


def test_concurrency_is_bounded(serve) -> None:
    server = serve(lambda text, attempt: (200, prefers_good(text), 0.3))  # long enough for requests to overlap
    judge = make_judge(server, max_concurrency=3)
    judged = judge.score(rows(*[(f"good {i}", f"bad {i}") for i in range(6)]))  # 12 requests
    assert all(r["scores"] == [1.0, 0.0] for r in judged)
    assert server.max_active == 3  # the pool is used, and never more than max_concurrency
    assert len(server.requests) == 12


def test_auth_key_and_fatal_statuses(serve, monkeypatch: pytest.MonkeyPatch) -> None:
    server = serve(lambda text, attempt: (200, "A", 0.0))
    monkeypatch.delenv("SPA_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(UserError, match="SPA_TEST_JUDGE_KEY"):
        make_judge(server, api_key_env="SPA_TEST_JUDGE_KEY")
    monkeypatch.setenv("SPA_TEST_JUDGE_KEY", "sekret")
    make_judge(server, api_key_env="SPA_TEST_JUDGE_KEY").score(rows(("a", "b")))
    assert server.headers[-1]["Authorization"] == "Bearer sekret"
    # A wrong key fails every request: the run stops with the status instead of judging nothing.
    denied = make_judge(serve(lambda text, attempt: (401, "", 0.0)))
    with pytest.raises(UserError, match="HTTP 401"):
        denied.score(rows(("a", "b")))
