"""driftloop.logs: text by default, one JSON object per line when asked, the log context."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from driftloop import logs
from driftloop.errors import ConfigError
from driftloop.steps.common import logged_step, step_context

REQUIRED = ("time", "level", "logger", "message")


@pytest.fixture()
def json_lines() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    """JSON logging into a buffer for one test; everything restored afterwards."""
    stream = io.StringIO()
    with logs.configure_logging("json", "DEBUG", stream=stream):
        yield stream, logging.getLogger("driftloop.test")


def _records(stream: io.StringIO) -> list[dict]:
    lines = stream.getvalue().splitlines()
    assert lines, "nothing was logged"
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for record in records:
        assert set(REQUIRED) <= set(record), record
    return records


def test_every_line_is_one_json_object_with_the_required_keys(json_lines):
    stream, log = json_lines
    log.info("plain")
    log.warning("two\nlines %s", "and args")
    logging.getLogger("kserve").error("a library's record")
    records = _records(stream)
    assert len(stream.getvalue().splitlines()) == 3
    assert [r["message"] for r in records] == ["plain", "two\nlines and args",
                                               "a library's record"]
    assert [r["level"] for r in records] == ["INFO", "WARNING", "ERROR"]
    assert records[0]["logger"] == "driftloop.test" and records[2]["logger"] == "kserve"
    stamp = dt.datetime.fromisoformat(records[0]["time"].replace("Z", "+00:00"))
    assert stamp.utcoffset() == dt.timedelta(0) and records[0]["time"].endswith("Z")
    assert abs((dt.datetime.now(dt.UTC) - stamp).total_seconds()) < 60
    assert "run_id" not in records[0] and "model" not in records[0]


def test_an_exception_is_one_line_with_error_and_traceback(json_lines):
    stream, log = json_lines
    try:
        raise ValueError("bad value\non two lines")
    except ValueError:
        log.exception("step failed")
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["message"] == "step failed" and record["level"] == "ERROR"
    assert record["error"] == "ValueError: bad value on two lines"
    assert record["traceback"].startswith("Traceback (most recent call last):")
    assert "raise ValueError" in record["traceback"]


def test_extra_fields_are_kept_and_never_replace_a_core_key(json_lines):
    stream, log = json_lines
    log.info("m", extra={"rows": 12, "path": Path("/x"), "level": "mine", "version": "v7"})
    (record,) = _records(stream)
    assert record["rows"] == 12 and record["path"] == "/x"  # default=str, not a crash
    assert record["level"] == "INFO" and record["extra_level"] == "mine"
    assert record["version"] == "v7"


def test_run_id_and_model_appear_inside_a_steps_context_and_not_outside(json_lines):
    stream, log = json_lines

    @logged_step("demo_step")
    def a_step(store: str, model_name: str, *, run_id: str) -> str:
        log.info("inside")
        return run_id

    log.info("before")
    assert a_step("s", "churn", run_id="run-1") == "run-1"
    with step_context("other", run_id="run-2"):
        log.info("no model known")
    log.info("after")
    mine = [r for r in _records(stream) if r["logger"] == "driftloop.test"]
    before, inside, partial, after = mine
    assert inside["run_id"] == "run-1" and inside["model"] == "churn"
    assert inside["step"] == "demo_step"
    assert partial["run_id"] == "run-2" and "model" not in partial
    for outside in (before, after):
        assert not {"run_id", "model", "step"} & set(outside), outside


def test_a_real_step_logs_with_its_run_and_model(json_lines, tmp_path: Path):
    from driftloop.steps import exit_step

    stream, _ = json_lines
    exit_step(str(tmp_path / "store"), model_name="churn", run_id="run 7", state="FAILED",
              error="boom")
    notes = [r for r in _records(stream) if r["logger"] == "driftloop.notify"]
    assert notes and notes[0]["level"] == "WARNING"
    # The decorator sees the caller's run id; the step itself makes it path-safe.
    assert notes[0]["run_id"] == "run 7" and notes[0]["model"] == "churn"
    assert notes[0]["step"] == "notify_on_exit"


def test_the_context_ends_with_its_block_even_when_it_raises(json_lines):
    stream, log = json_lines
    with pytest.raises(RuntimeError), logs.log_context(run_id="r"):
        raise RuntimeError
    log.info("after")
    assert "run_id" not in _records(stream)[0]
    assert logs.current_context() == {}


def test_nested_contexts_overlay_and_concurrent_tasks_keep_their_own(json_lines):
    stream, log = json_lines

    async def task(run_id: str) -> None:
        with logs.log_context(run_id=run_id, model="m"):
            await asyncio.sleep(0)
            with logs.log_context(version=f"v-{run_id}", model=None):
                await asyncio.sleep(0)
                log.info(run_id)

    async def both() -> None:
        await asyncio.gather(task("a"), task("b"))

    asyncio.run(both())
    records = {r["message"]: r for r in _records(stream)}
    assert records["a"]["run_id"] == "a" and records["a"]["version"] == "v-a"
    assert records["b"]["run_id"] == "b" and records["b"]["version"] == "v-b"
    assert records["a"]["model"] == "m"  # None keeps the outer block's value


def test_the_process_context_reaches_other_threads(json_lines):
    stream, log = json_lines
    logs.set_process_context(model="served", version="v3")
    try:
        thread = threading.Thread(target=log.info, args=("from a thread",))
        thread.start()
        thread.join()
        with logs.log_context(version="v4"):  # a block's value wins over the process's
            log.info("overridden")
    finally:
        logs.set_process_context(model=None, version=None)
    log.info("cleared")
    threaded, overridden, cleared = _records(stream)
    assert threaded["model"] == "served" and threaded["version"] == "v3"
    assert overridden["version"] == "v4"
    assert "model" not in cleared


def test_text_is_the_default():
    assert logs.resolve_format(None, environ={}) == "text"
    assert logs.resolve_format(None, environ={logs.ENV_VAR: ""}) == "text"
    assert logs.resolve_format(None, environ={logs.ENV_VAR: "JSON"}) == "json"
    assert logs.resolve_format("text", environ={logs.ENV_VAR: "json"}) == "text"  # flag wins
    stream = io.StringIO()
    with logs.configure_logging(stream=stream) as setup:
        assert setup.format == "text" and not logs.json_active()
        with logs.log_context(run_id="r1", model="m"):
            logging.getLogger("driftloop.test").warning("hello")
    line = stream.getvalue().strip()
    assert line.endswith("WARNING driftloop.test: hello [run_id=r1 model=m]")
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


@pytest.mark.parametrize(("flag", "environ", "named"), [
    ("xml", {}, "--log-format"),
    (None, {logs.ENV_VAR: "yaml"}, logs.ENV_VAR),
])
def test_a_bad_format_is_a_one_line_error_naming_its_source(flag, environ, named):
    with pytest.raises(ConfigError) as caught:
        logs.resolve_format(flag, environ=environ)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(named)
    assert "text or json" in message


def test_a_bad_level_is_a_one_line_error():
    with pytest.raises(ConfigError, match="not a level"):
        logs.configure_logging("json", "loud")


def test_restore_puts_back_the_handlers_found_before():
    root = logging.getLogger()
    before = list(root.handlers), root.level
    kserve = logging.getLogger("kserve")
    mine = logging.NullHandler()
    kserve.addHandler(mine)
    kserve.propagate = False
    try:
        setup = logs.configure_logging("json", stream=io.StringIO())
        assert root.handlers == [setup.handler] and kserve.handlers == [] and kserve.propagate
        setup.restore()
        setup.restore()  # idempotent
        assert (list(root.handlers), root.level) == before
        assert kserve.handlers == [mine] and kserve.propagate is False
    finally:
        kserve.removeHandler(mine)
        kserve.propagate = True


def test_kserve_logging_set_up_before_or_after_ends_in_the_same_json_handler():
    # kserve v0.20.0 python/kserve/kserve/logging.py: configure_logging() gives "kserve"
    # and "uvicorn" their own text handlers; it is skipped once "kserve" has a handler,
    # its own or an ancestor's (logger.hasHandlers()).
    from kserve import logging as kserve_logging

    saved = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate,
                    logging.getLogger(name).level)
             for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.error",
                          "uvicorn.access")}
    stream = io.StringIO()
    try:
        with logs.configure_logging("json", stream=stream):
            kserve_logging.configure_logging()  # after ours: a no-op
            assert logging.getLogger("kserve").handlers == []
            logging.getLogger("kserve").warning("after")
        for name in saved:
            logging.getLogger(name).handlers = []
        logging.getLogger("kserve").propagate = True
        # Before ours (pytest's root handlers would make the default call skip: pass
        # the config it would apply): its handlers are set aside.
        kserve_logging.configure_logging(kserve_logging.KSERVE_LOG_CONFIG)
        assert logging.getLogger("kserve").handlers
        with logs.configure_logging("json", stream=stream):
            logging.getLogger("kserve").warning("before")
            logging.getLogger("uvicorn.error").info("uvicorn too")
    finally:
        for name, (handlers, propagate, level) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)
    messages = [r["message"] for r in _records(stream)]
    assert messages == ["after", "before", "uvicorn too"]


def test_uvicorn_access_lines_carry_the_request_as_fields(json_lines):
    stream, _ = json_lines
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5",
                                             "POST", "/feedback", "1.1", 200)
    (record,) = _records(stream)
    assert record["message"] == '127.0.0.1:5 - "POST /feedback HTTP/1.1" 200'
    assert (record["method"], record["path"], record["status"]) == ("POST", "/feedback", 200)


def test_a_step_installs_the_environments_format_once(monkeypatch, capsys):
    # KFP 2.17.0 kfp/dsl/executor_main.py: basicConfig(stream=sys.stdout) before the body.
    root = logging.getLogger()
    kfp_handler = logging.StreamHandler(io.StringIO())
    saved = list(root.handlers), root.level
    root.handlers = [kfp_handler]
    monkeypatch.setenv(logs.ENV_VAR, "json")
    try:
        with step_context("ingest", run_id="r1"):
            active = logs._active
            assert active is not None and active.format == "json"
            assert root.handlers == [active.handler]  # replaced, not added to: no echo
            logging.getLogger("driftloop.test").info("in the step")
        with step_context("drift", run_id="r1"):
            assert logs._active is active  # once per process
    finally:
        if logs._active is not None:
            logs._active.restore()
        root.handlers, _ = saved
        root.setLevel(saved[1])
    assert kfp_handler.stream.getvalue() == ""
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["run_id"] == "r1" and json.loads(line)["step"] == "ingest"


def test_a_step_leaves_an_entry_points_choice_and_a_bad_variable_alone(monkeypatch, caplog):
    monkeypatch.setenv(logs.ENV_VAR, "json")
    with logs.configure_logging("text", stream=io.StringIO()) as setup, step_context("ingest"):
        assert logs._active is setup  # the CLI's text stays
    monkeypatch.setenv(logs.ENV_VAR, "xml")
    with caplog.at_level(logging.WARNING), step_context("ingest"):
        assert logs._active is None  # a log setting never fails a pipeline run
    assert any(logs.ENV_VAR in r.getMessage() for r in caplog.records)


def test_report_error_is_a_json_record_in_json_mode(json_lines, capsys):
    stream, _ = json_lines
    logs.report_error("driftloop x: error: nope", logger="driftloop.cli")
    (record,) = _records(stream)
    assert record["message"] == "driftloop x: error: nope" and record["level"] == "ERROR"
    assert capsys.readouterr().err == ""


# -- the driftloop command --------------------------------------------------------------


def test_cli_bad_log_format_is_one_line_naming_the_flag(capsys, tmp_path: Path):
    from driftloop.cli import main

    code = main(["--log-format", "xml", "models", "--store", str(tmp_path), "--model", "m",
                 "list"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("driftloop: error: --log-format: 'xml'")


def test_cli_json_errors_are_json_and_the_format_reaches_child_processes(
        capsys, monkeypatch, tmp_path: Path):
    from driftloop.cli import main

    monkeypatch.delenv(logs.ENV_VAR, raising=False)
    seen = {}

    def fake_models(args) -> int:
        import os

        seen["env"] = os.environ.get(logs.ENV_VAR)
        logging.getLogger("driftloop.models.registry").info("listing")
        raise ConfigError("no such thing")

    monkeypatch.setattr("driftloop.cli.parser.cmd_models", fake_models)
    code = main(["--log-format", "json", "models", "--store", str(tmp_path), "--model", "m",
                 "list"])
    assert code == ConfigError.exit_code and seen["env"] == "json"
    import os

    assert logs.ENV_VAR not in os.environ and logs._active is None  # both undone
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [r["message"] for r in records] == ["listing", "driftloop models: error: no such thing"]
    assert records[1]["logger"] == "driftloop.cli"


def test_cli_without_a_flag_leaves_logging_as_python_has_it(capsys, monkeypatch,
                                                             tmp_path: Path):
    from driftloop.cli import main

    monkeypatch.delenv(logs.ENV_VAR, raising=False)
    handlers = list(logging.getLogger().handlers)

    def fake_models(args) -> int:
        assert logs._active is None and logging.getLogger().handlers == handlers
        raise ConfigError("no such thing")

    monkeypatch.setattr("driftloop.cli.parser.cmd_models", fake_models)
    assert main(["models", "--store", str(tmp_path), "--model", "m", "list"]) == 2
    assert capsys.readouterr().err == "driftloop models: error: no such thing\n"


def test_python_warnings_are_json_records_in_json_mode(json_lines):
    stream, _ = json_lines
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("an old API", DeprecationWarning, stacklevel=1)
    (record,) = _records(stream)
    assert record["logger"] == "py.warnings" and "DeprecationWarning: an old API" in (
        record["message"])


def test_the_pipeline_image_logs_json():
    dockerfile = (Path(__file__).parents[2] / "components" / "Dockerfile").read_text()
    runtime = dockerfile.rsplit("\nFROM ", 1)[1]  # the stage the components run in
    assert f"{logs.ENV_VAR}=json" in runtime
