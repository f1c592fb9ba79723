"""scripts/load_test.py on the test index: concurrent searches over loopback, every answer checked."""

import importlib.util
import json
import os

import pytest

pytest.importorskip("fastapi", reason="the service needs FastAPI (pip install 'sdsh[service]')")

from ..reliability.conftest import REPO_ROOT  # noqa: E402


def load_script():
    spec = importlib.util.spec_from_file_location("load_test", os.path.join(REPO_ROOT, "scripts", "load_test.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_load_script_reports_its_table_with_zero_wrong_answers(archive, tmp_path, capsys):
    script = load_script()
    out = tmp_path / "load.json"
    argv = ["--index", str(archive["index"]), "--concurrency", "1,4", "--requests", "24", "-k", "12", "--json", str(out)]
    assert script.main(argv) == 0
    printed = capsys.readouterr().out
    assert "clients  requests  wrong  errors" in printed and "memory (RSS, MiB): before" in printed
    result = json.loads(out.read_text())
    assert [r["concurrency"] for r in result["rows"]] == [1, 4]
    assert all(r["requests"] == 24 and r["wrong"] == 0 and r["errors"] == 0 for r in result["rows"])
    assert all(r["p99_ms"] >= r["p50_ms"] > 0 and r["qps"] > 0 for r in result["rows"])


def test_a_wrong_answer_is_counted_and_fails_the_run(archive, tmp_path, capsys, monkeypatch):
    script = load_script()
    exact = script.exact_answers

    def off_by_one(searcher, queries, k):
        return {i: (ids, [d + 1 for d in distances]) for i, (ids, distances) in exact(searcher, queries, k).items()}

    monkeypatch.setattr(script, "exact_answers", off_by_one)
    out = tmp_path / "load.json"
    assert script.main(["--index", str(archive["index"]), "--concurrency", "2", "--requests", "6", "--json", str(out)]) == 1
    assert json.loads(out.read_text())["rows"][0]["wrong"] == 6


@pytest.mark.parametrize(
    "option, message",
    [(["--concurrency", "65"], "each level must be 1..64"), (["--requests", "20000"], "--requests=20000"), (["--time-limit", "0"], "--time-limit=0")],
)
def test_the_bounds_are_enforced_naming_the_option(archive, capsys, option, message):
    assert load_script().main(["--index", str(archive["index"]), *option]) == 2
    assert message in capsys.readouterr().err
