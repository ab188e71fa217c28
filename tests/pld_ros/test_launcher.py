"""GraphRunner on plain processes: ordering, escalation and exit reporting, without ROS."""

from __future__ import annotations

import io
import sys
import time

from pld_ros.launcher import GraphRunner, ProcessSpec

PY = sys.executable


def spec(name: str, code: str, respawn: bool = False) -> ProcessSpec:
    return ProcessSpec(name=name, argv=(PY, "-c", code), respawn=respawn, respawn_delay=0.2)


def test_output_is_prefixed_and_a_clean_run_ends_on_its_duration() -> None:
    out = io.StringIO()
    runner = GraphRunner([spec("a", "import time; print('hello', flush=True); time.sleep(30)")], out=out)
    report = runner.run(duration=1.5)
    assert report.exit_code == 0
    assert "duration of 1.5 s reached" in report.reason
    assert "[a] hello" in out.getvalue()


def test_a_dying_required_node_stops_the_graph_and_is_reported() -> None:
    out = io.StringIO()
    runner = GraphRunner(
        [
            spec("steady", "import time; time.sleep(30)"),
            spec("crasher", "import sys, time; time.sleep(0.5); print('boom', flush=True); sys.exit(7)"),
        ],
        out=out,
    )
    start = time.monotonic()
    report = runner.run(duration=20)
    assert time.monotonic() - start < 10
    assert report.exit_code == 1
    [failure] = report.failed
    assert failure.name == "crasher" and failure.returncode == 7
    assert failure.cause == "exited with code 7"
    assert "boom" in failure.last_output
    assert "required node 'crasher' exited with code 7" in report.reason
    assert "node 'steady' stopped" in out.getvalue()


def test_respawned_node_comes_back() -> None:
    out = io.StringIO()
    runner = GraphRunner(
        [spec("flaky", "import sys, time; time.sleep(0.3); sys.exit(3)", respawn=True)], out=out
    )
    report = runner.run(duration=2.5)
    assert report.exit_code == 0
    assert report.respawns["flaky"] >= 2


def test_a_node_that_ignores_sigint_is_escalated_and_the_stop_is_bounded() -> None:
    stubborn = (
        "import signal, time, sys\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    out = io.StringIO()
    runner = GraphRunner([spec("stubborn", stubborn)], out=out, sigint_grace=1.0, sigterm_grace=1.0)
    start = time.monotonic()
    runner.run(duration=0.5)
    elapsed = time.monotonic() - start
    assert "escalating to SIGTERM for stubborn" in out.getvalue()
    assert "node 'stubborn' stopped (killed by SIGTERM (exit -15))" in out.getvalue()
    assert elapsed < 0.5 + 1.0 + 1.0 + 1.0


def test_a_node_that_ends_the_run_stops_the_graph_cleanly_when_it_exits_0() -> None:
    out = io.StringIO()
    finisher = ProcessSpec(name="supervisor", argv=(PY, "-c", "import time; time.sleep(0.5)"), ends_run=True)
    runner = GraphRunner([spec("steady", "import time; time.sleep(30)"), finisher], out=out)
    report = runner.run(duration=20)
    assert report.exit_code == 0
    assert report.reason == "'supervisor' finished the run"


def test_a_node_that_ends_the_run_still_fails_the_run_when_it_crashes() -> None:
    crasher = ProcessSpec(name="supervisor", argv=(PY, "-c", "import sys; sys.exit(3)"), ends_run=True)
    report = GraphRunner([spec("steady", "import time; time.sleep(30)"), crasher], out=io.StringIO()).run(20)
    assert report.exit_code == 1
    assert [f.name for f in report.failed] == ["supervisor"]
