"""The profile command's attribution of py-spy samples to layers (`python -m tools.perf profile`).

The stacks are py-spy's raw format as it records them from the app; the command itself
needs ptrace rights over the app's process, so it is run by hand, not here.
"""

from __future__ import annotations

from tools.perf.profile import OTHER, Round, layer_of, profile_table, shares

SITE = "/repo/.venv/lib/python3.11/site-packages"
STDLIB = "/usr/lib/python3.11"
ROOT = [
    f"run ({SITE}/uvicorn/main.py:632)",
    f"Runner.run ({STDLIB}/asyncio/runners.py:118)",
]
RESPOND = [*ROOT, "ChatStream._respond (/repo/functions/chat/chat/relay.py:139)"]


def test_a_frame_of_a_library_counts_for_the_layer_that_called_it() -> None:
    h11_under_httpcore = [
        *RESPOND,
        "Upstream._create (/repo/functions/chat/chat/upstream.py:247)",
        f"AsyncAPIClient.post ({SITE}/openai/_base_client.py:2085)",
        f"AsyncHTTP11Connection.handle_async_request ({SITE}/httpcore2/_async/http11.py:79)",
        f"validate ({SITE}/h11/_util.py:92)",
    ]
    assert layer_of(h11_under_httpcore) == "HTTP client (httpx2, httpcore2, anyio, h11)"
    json_under_parser = [
        *ROOT,
        "chat_stream (/repo/functions/chat/chat/app.py:160)",
        "parse_chat_request (/repo/functions/chat/chat/chat_request.py:40)",
        f"JSONDecoder.decode ({STDLIB}/json/decoder.py:337)",
    ]
    assert layer_of(json_under_parser) == "body parsing"


def test_named_functions_win_over_their_file() -> None:
    assert layer_of([*ROOT, "_Watchdog.run (/repo/functions/chat/chat/relay.py:60)"]).startswith("tasks")
    assert layer_of([*RESPOND, "ChatStream._relay (/repo/functions/chat/chat/relay.py:173)"]).startswith("relay")
    assert layer_of([*ROOT, "create_app.<locals>.reserve (/repo/functions/chat/chat/app.py:220)"]).startswith("route")
    assert layer_of([*ROOT, "_read_body (/repo/functions/chat/chat/app.py:160)"]) == "body parsing"


def test_uvloop_itself_is_the_event_loop_and_a_torn_stack_is_other() -> None:
    assert layer_of(ROOT) == "event loop (uvloop, asyncio)"
    assert layer_of([f"Event.wait ({STDLIB}/asyncio/locks.py:213)"]) == OTHER


def test_each_round_splits_its_cpu_by_samples_and_the_table_takes_the_median() -> None:
    uvicorn = ";".join([*ROOT, f"RequestResponseCycle.send ({SITE}/uvicorn/protocols/http/httptools_impl.py:480)"])
    loop = ";".join(ROOT)
    counts, total = shares([f"{loop} 3", f"{uvicorn} 1"])
    assert (counts, total) == ({"event loop (uvloop, asyncio)": 3, "uvicorn (HTTP server)": 1}, 4)
    rounds = [
        Round.of(0.002, [f"{loop} 3", f"{uvicorn} 1"]),  # uvicorn 0.5 ms, loop 1.5 ms
        Round.of(0.004, [f"{loop} 1", f"{uvicorn} 1"]),  # uvicorn 2 ms, loop 2 ms
        Round.of(0.003, [f"{uvicorn} 1"]),  # uvicorn 3 ms, loop 0
    ]
    lines = profile_table(rounds).splitlines()[2:]
    rows = {cells[0]: cells[1:] for cells in ([cell.strip() for cell in line.strip("|").split("|")] for line in lines)}
    assert rows == {
        "uvicorn (HTTP server)": ["2.000 (0.500\N{EN DASH}3.000)", "66.7"],
        "event loop (uvloop, asyncio)": ["1.500 (0.000\N{EN DASH}2.000)", "50.0"],
        "total (CPU per request from /proc)": ["3.000 (2.000\N{EN DASH}4.000)", ""],
    }
