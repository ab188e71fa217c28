"""config/pld.perspective (rqt's saved-perspective JSON, loaded by `rqt --perspective-file`):
rqt is not available here, so the file is checked as rqt_gui reads it, and every series it plots
must be a documented topic (docs/topics.md) with that field in the topic's message type; every
documented metric key must be one a node publishes."""

from __future__ import annotations

import ast
import importlib
import json
import re
from typing import Any

from tests.conftest import CONFIG_DIR, ROOT

PERSPECTIVE = CONFIG_DIR / "pld.perspective"
TOPICS_DOC = ROOT / "docs" / "topics.md"
NODES_DIR = ROOT / "src" / "pld_ros" / "pld_ros" / "nodes"
PLUGINS = {"rqt_plot/Plot", "rqt_robot_monitor/RobotMonitor", "rqt_topic/TopicPlugin"}


def table(heading: str) -> list[list[str]]:
    """The rows of the first table under ``heading`` in docs/topics.md, cells stripped."""
    text = TOPICS_DOC.read_text()
    rows = []
    for line in text[text.index(heading) :].splitlines():
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[2:]  # header and rule


def names(cell: str) -> list[str]:
    """The `code` spans of a cell."""
    return re.findall(r"`([^`]+)`", cell)


def documented_topics() -> dict[str, str]:
    """Regex of every documented topic name (placeholders match one name segment) -> its type."""
    topics: dict[str, str] = {}
    for row in table("| name | type |"):
        for name in names(row[0]):
            if "<key>" in name:
                continue  # the pointer to the metric topics' own table, read below
            pattern = re.sub(r"<[^>]+>", "[^/]+", re.escape(name).replace(r"\<", "<").replace(r"\>", ">"))
            topics["/?" + pattern.lstrip("/")] = names(row[1])[0]
    for row in table("| prefix | from | keys |"):
        for prefix in names(row[0]):
            for key in names(row[2]):
                topics["/?" + re.sub(r"<[^>]+>", "[^/]+", f"{prefix}/metrics/{key}")] = "std_msgs/Float64"
    return topics


def settings(group: dict[str, Any]) -> dict[str, Any]:
    """A plugin instance's saved settings, each value as rqt stores it: a Python repr."""
    keys = group["groups"]["plugin"]["keys"]
    assert all(value["type"] == "repr" for value in keys.values())
    return {key: ast.literal_eval(value["repr"]) for key, value in keys.items()}


def field_exists(message_type: str, path: str) -> bool:
    package, name = message_type.split("/")
    message = getattr(importlib.import_module(f"{package}.msg"), name)
    for part in path.split("/"):
        fields = message.get_fields_and_field_types()
        field = part.split("[")[0]
        if field not in fields:
            return False
        kind = fields[field].split("[")[0].split("<")[-1].rstrip(">")
        if "/" in kind:
            package, name = kind.split("/")
            message = getattr(importlib.import_module(f"{package}.msg"), name)
    return True


def test_the_perspective_is_what_rqt_gui_saves() -> None:
    data = json.loads(PERSPECTIVE.read_text())
    manager = data["groups"]["pluginmanager"]
    running = ast.literal_eval(manager["keys"]["running-plugins"]["repr"])
    assert set(running) == PLUGINS
    expected = {
        f"plugin__{plugin.replace('/', '__')}__{serial}"
        for plugin, serials in running.items()
        for serial in serials
    }
    assert set(manager["groups"]) == expected
    for group_name, group in manager["groups"].items():
        if "rqt_plot" in group_name:
            values = settings(group)
            assert values["autoscroll"] is True and values["plot_type"] == 1  # MatPlot
            assert values["topics"] and all(topic.startswith("/") for topic in values["topics"])


def test_every_plotted_series_is_a_documented_topic_and_field() -> None:
    topics = documented_topics()
    manager = json.loads(PERSPECTIVE.read_text())["groups"]["pluginmanager"]
    plotted = [
        series
        for name, group in manager["groups"].items()
        if "rqt_plot" in name
        for series in settings(group)["topics"]
    ]
    assert "/trainer/metrics/critic_loss" in plotted and "/episode/metrics/success_rate/data" in plotted
    for series in plotted:
        # The longest documented topic the series starts with; the rest is the field path.
        matches = [
            (match.end(), message_type)
            for pattern, message_type in topics.items()
            if (match := re.match(pattern + "(?=/)", series))
        ]
        assert matches, f"{series}: no documented topic in docs/topics.md"
        end, message_type = max(matches)
        assert field_exists(message_type, series[end + 1 :]), f"{series}: no such field in {message_type}"


def test_every_documented_metric_key_is_published_by_a_node() -> None:
    sources = "\n".join(path.read_text() for path in NODES_DIR.glob("*.py"))
    for row in table("| prefix | from | keys |"):
        for key in names(row[2]):
            literal = key.split("<")[0]  # render_ms/<camera> is an f-string: f"render_ms/{name}"
            assert f'"{literal}' in sources or f"{literal}=" in sources, (
                f"{key} ({row[1]}): published by no node"
            )


def test_the_field_check_can_fail() -> None:
    assert field_exists("pld_msgs/TrainingMetrics", "critic_loss")
    assert not field_exists("pld_msgs/TrainingMetrics", "critic_los")
    assert field_exists("pld_msgs/EpisodeStatus", "phase/value")
    assert not field_exists("std_msgs/Float64", "value")
