"""`tidegauge.run`: pipeline files run from Python, their `python` sinks read as
iterators of pyarrow.RecordBatch."""

import _thread
import gc
import json
import math
import os
import subprocess
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

import tidegauge

FLEET = """
[sources.fleet]
type = "simulate"
sensors = 5
rate = 1000
realtime = false
{events}
seed = 3
start_ms = 1700000000000

[transforms.spikes]
type = "zscore"
inputs = ["fleet"]
window = 50
threshold = 3.0
"""


def fleet(events=None, realtime=False, rate=1000) -> str:
    text = FLEET.format(events=f"events = {events}" if events is not None else "")
    text = text.replace("realtime = false", f"realtime = {str(realtime).lower()}")
    return text.replace("rate = 1000", f"rate = {rate}")


def pipeline_threads() -> list:
    """The names of this process's threads that the engine started (all `tg-...`)."""
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
        except OSError:  # ended meanwhile
            continue
        if name.startswith("tg-"):
            names.append(name)
    return names


def assert_threads_end():
    """The engine's threads are gone. Stopping joins the pipeline before it returns; a
    transform's thread may still be unwinding its last frame, so this looks a few times."""
    for _ in range(100):
        if not pipeline_threads():
            return
        time.sleep(0.05)
    assert pipeline_threads() == []


def same_value(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b))
    return a == b


def test_python_sink_gets_what_the_binarys_jsonl_sink_writes(tidegauge_bin, tmp_path):
    assert pipeline_threads() == []
    text = fleet(events=20000)
    binary = tmp_path / "binary.toml"
    out = tmp_path / "out.jsonl"
    binary.write_text(text + f'\n[sinks.out]\ntype = "jsonl"\ninputs = ["spikes"]\npath = "{out}"\nappend = false\n')
    subprocess.run([str(tidegauge_bin), "run", "--quiet", str(binary)], check=True, capture_output=True)
    expected = [json.loads(line) for line in out.read_text().splitlines()]

    piped = tmp_path / "python.toml"
    piped.write_text(text + '\n[sinks.out]\ntype = "python"\ninputs = ["spikes"]\n')
    output = tidegauge.run(piped)
    assert isinstance(output, tidegauge.Output)
    batches = list(output)
    assert batches and all(isinstance(b, pa.RecordBatch) for b in batches)
    rows = pa.Table.from_batches(batches).to_pylist()

    assert len(rows) == len(expected) == 20000
    assert sum(r["is_anomaly"] for r in rows) > 0, "a run flagging nothing proves little"
    key = lambda r: (r["sensor_id"], r["ts"])  # noqa: E731
    for got, want in zip(sorted(rows, key=key), sorted(expected, key=key)):
        assert got.keys() == want.keys()
        for k in want:
            assert same_value(got[k], want[k]), (k, got, want)
    # The iterator ended with the pipeline: its threads are gone.
    assert_threads_end()


def test_text_pipeline_and_read_all():
    table = tidegauge.run(text=fleet(events=1000) + '\n[sinks.out]\ntype = "python"\ninputs = ["spikes"]\n').read_all()
    assert table.num_rows == 1000
    assert "anomaly_score" in table.column_names
    assert_threads_end()


def test_invalid_pipeline_raises_what_check_prints(tidegauge_bin, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(fleet(events=10).replace("window = 50", "window = 0\nwindo = 5") + '\n[sinks.out]\ntype = "python"\ninputs = ["nowhere"]\n')
    cli = subprocess.run([str(tidegauge_bin), "check", str(bad)], capture_output=True, text=True)
    assert cli.returncode == 2
    with pytest.raises(tidegauge.InvalidPipelineError) as e:
        tidegauge.run(str(bad))
    # `check` knows no `python` sink (the engine has it in the Python build only); the
    # rest of its report is the same.
    report = [line for line in cli.stderr.splitlines() if "python" not in line and "problem" not in line]
    assert report, cli.stderr
    for line in report:
        assert line in str(e.value).splitlines(), (line, str(e.value))
    assert "nothing was run" in str(e.value)
    assert pipeline_threads() == []


def test_a_component_that_cannot_be_built_raises_the_runs_message(tidegauge_bin, tmp_path):
    missing = tmp_path / "missing.jsonl"
    text = f'[sources.f]\ntype = "file"\npaths = ["{missing}"]\n\n[sinks.out]\ntype = "python"\ninputs = ["f"]\n'
    cli_file = tmp_path / "cli.toml"
    cli_file.write_text(text.replace('type = "python"', 'type = "stdout"'))
    cli = subprocess.run([str(tidegauge_bin), "run", "--quiet", str(cli_file)], capture_output=True, text=True)
    assert cli.returncode != 0
    py_file = tmp_path / "py.toml"
    py_file.write_text(text)
    with pytest.raises(tidegauge.PipelineError) as e:
        tidegauge.run(py_file)
    assert str(e.value) == cli.stderr.strip().replace(str(cli_file), str(py_file))
    assert_threads_end()


def test_early_close_stops_an_endless_pipeline():
    out = tidegauge.run(text=fleet() + '\n[sinks.out]\ntype = "python"\ninputs = ["spikes"]\n')
    first = [next(out) for _ in range(3)]
    assert all(b.num_rows > 0 for b in first)
    assert pipeline_threads(), "the pipeline runs on threads of its own"
    out.close()
    assert list(out) == []
    assert_threads_end()


def test_leaving_a_with_block_or_dropping_the_output_stops_the_pipeline():
    text = fleet() + '\n[sinks.out]\ntype = "python"\ninputs = ["spikes"]\n'
    with tidegauge.run(text=text) as out:
        for i, _ in enumerate(out):
            if i == 2:
                break
    assert_threads_end()

    out = tidegauge.run(text=text)
    next(out)
    del out
    gc.collect()
    assert_threads_end()


@pytest.mark.skip(
    reason="hung once in CI: the interrupt never surfaced while the iterator waited "
    "(main thread parked in its 100 ms wait loop for minutes); to be understood before it runs again"
)
def test_keyboard_interrupt_while_waiting_stops_the_pipeline():
    # One event a second: the iterator waits, and Ctrl-C comes while it does.
    out = tidegauge.run(text=fleet(realtime=True, rate=1) + '\n[sinks.out]\ntype = "python"\ninputs = ["spikes"]\n')
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        for _ in out:
            pass
    timer.join()
    assert_threads_end()


def test_several_python_sinks_give_a_dict_of_outputs():
    text = fleet(events=5000) + """
[transforms.flagged]
type = "filter"
inputs = ["spikes"]
condition = "is_anomaly"

[sinks.every]
type = "python"
inputs = ["spikes"]

[sinks.alerts]
type = "python"
inputs = ["flagged"]
"""
    outputs = tidegauge.run(text=text)
    assert sorted(outputs) == ["alerts", "every"]
    tables = {}

    def read(name):
        tables[name] = outputs[name].read_all()

    readers = [threading.Thread(target=read, args=(n,)) for n in outputs]
    for r in readers:
        r.start()
    for r in readers:
        r.join()
    assert tables["every"].num_rows == 5000
    flagged = tables["every"].filter(tables["every"].column("is_anomaly"))
    assert tables["alerts"].num_rows == flagged.num_rows > 0
    assert tables["alerts"].column("ts").to_pylist() == flagged.column("ts").to_pylist()
    assert_threads_end()


def test_a_pipeline_without_python_sink_runs_to_its_end(tmp_path):
    out_file = tmp_path / "out.jsonl"
    text = fleet(events=500) + f'\n[sinks.out]\ntype = "jsonl"\ninputs = ["spikes"]\npath = "{out_file}"\nappend = false\n'
    assert list(tidegauge.run(text=text)) == []
    assert len(out_file.read_text().splitlines()) == 500
    assert_threads_end()


def test_the_python_sink_is_described():
    text = tidegauge.describe("python")
    assert "buffer_batches" in text
    assert "tidegauge.run" in text


@pytest.mark.parametrize("stateful", [False, True])
def test_batches_python_did_not_take_are_not_acknowledged(tmp_path, stateful):
    """Closing early fails what Python did not take, so the file source does not commit
    past it: a second run from the same checkpoint directory delivers every line the
    first run's iterator did not return (at least once: it may deliver some again).
    With a stateful stage in between, a checkpoint (position with detector state) would
    win over the acknowledged position on restart: none may be written past what Python
    took."""
    lines = tmp_path / "in.jsonl"
    with open(lines, "w") as f:
        for i in range(100_000):
            f.write(f'{{"sensor_id": "s{i % 7}", "ts": {i}, "value": {i % 13}.5}}\n')
    text = f"""
[checkpoint]
dir = "{tmp_path / 'checkpoint'}"

[sources.f]
type = "file"
paths = ["{lines}"]

[sinks.out]
type = "python"
inputs = ["{'z' if stateful else 'f'}"]
buffer_batches = 1
"""
    if stateful:
        text += """
[transforms.z]
type = "zscore"
inputs = ["f"]
"""
    out = tidegauge.run(text=text)
    taken = [next(out) for _ in range(2)]
    out.close()
    first = {t for b in taken for t in b.column("ts").to_pylist()}
    assert 0 < len(first) < 100_000, "the file must span more than two batches"
    rest = tidegauge.run(text=text).read_all()
    second = set(rest.column("ts").to_pylist())
    assert first | second == set(range(100_000))
    assert_threads_end()
