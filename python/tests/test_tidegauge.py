import csv
import json
import math
import subprocess
import textwrap
from pathlib import Path

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pytest

import tidegauge
from conftest import SHARED


def small_table() -> pa.Table:
    values = [10.0, 10.5, 9.5, 10.2, 9.8, 10.1, 9.9, 10.0, 60.0, 10.3] * 3
    return pa.table(
        {
            "sensor_id": ["a"] * 10 + ["b"] * 10 + ["a"] * 10,
            "ts": list(range(30)),
            "value": values,
        }
    )


ADDED = ["z", "anomaly_score", "is_anomaly", "reason"]


def test_arrow_input_gives_arrow_with_the_detector_columns():
    t = small_table()
    out = tidegauge.score(t, detector="zscore", window=8)
    assert isinstance(out, pa.Table)
    assert out.num_rows == t.num_rows
    assert out.column_names[:3] == ["sensor_id", "ts", "value"]
    for name in ["anomaly_score", "is_anomaly", "reason"]:
        assert name in out.column_names
    flags = out.column("is_anomaly").to_pylist()
    # The 60.0 readings of sensor a are outliers once its window holds enough readings.
    assert flags[28] is True
    assert flags[1] is False
    assert out.column("reason").to_pylist()[28]


def test_pandas_and_polars_give_their_own_type_and_the_same_results():
    t = small_table()
    expected = tidegauge.score(t, detector="zscore", window=8)
    pdf = tidegauge.score(t.to_pandas().set_index(pd.RangeIndex(100, 130)), detector="zscore", window=8)
    assert isinstance(pdf, pd.DataFrame)
    assert list(pdf.index) == list(range(100, 130))
    assert pdf["anomaly_score"].tolist() == expected.column("anomaly_score").to_pylist()
    plf = tidegauge.score(pl.from_arrow(t), detector="zscore", window=8)
    assert isinstance(plf, pl.DataFrame)
    assert plf["anomaly_score"].to_list() == expected.column("anomaly_score").to_pylist()
    assert plf["is_anomaly"].to_list() == expected.column("is_anomaly").to_pylist()


def run_binary(binary: Path, args: list, tmp: Path) -> list:
    out = tmp / "out"
    subprocess.run([str(binary), "score", "--no-progress", "--out", str(out), *args], check=True, capture_output=True)
    (result,) = list(out.rglob("*.csv"))
    with open(result) as f:
        return list(csv.DictReader(f))


def assert_same(rows: list, table: pa.Table):
    scores = table.column("anomaly_score").to_pylist()
    flags = table.column("is_anomaly").to_pylist()
    assert len(rows) == len(scores)
    assert any(flags), "the data has anomalies; a run flagging none proves nothing"
    for i, row in enumerate(rows):
        s = scores[i] if scores[i] is not None else 0.0
        assert math.isclose(float(row["anomaly_score"]), s, rel_tol=1e-9, abs_tol=1e-12), i
        assert (row["is_anomaly"] == "1") == bool(flags[i]), i


@pytest.mark.parametrize("detector", ["zscore", "mad"])
def test_w1_200k_equals_the_binary(tidegauge_bin, w1_200k, tmp_path, detector):
    rows = run_binary(
        tidegauge_bin,
        ["-d", detector, "--key-column", "sensor_id", "--time-column", "ts", "--value-columns", "value", str(w1_200k)],
        tmp_path,
    )
    table = pajson.read_json(w1_200k)
    assert_same(rows, tidegauge.score(table, detector=detector))


def test_skab_equals_the_binary(tidegauge_bin, tmp_path):
    path = SHARED / "data" / "skab" / "valve1" / "1.csv"
    rows = run_binary(
        tidegauge_bin,
        ["-d", "zscore", "--set", "window=120", "--delimiter", ";", "--value-columns", "Pressure", str(path)],
        tmp_path,
    )
    table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=";"))
    assert_same(rows, tidegauge.score(table, detector="zscore", key=None, value="Pressure", time=None, window=120))


def test_saved_and_restored_detector_goes_on_as_if_uninterrupted(w1_200k):
    table = pajson.read_json(w1_200k).slice(0, 50000)
    whole = tidegauge.score(table, detector="mad", window=50)
    d = tidegauge.Detector("mad", window=50)
    first = d.update(table.slice(0, 20000))
    saved = d.save()
    assert isinstance(saved, bytes) and len(saved) > 1000
    d2 = tidegauge.Detector.restore(saved)
    rest = d2.update(table.slice(20000))
    got = first.column("anomaly_score").to_pylist() + rest.column("anomaly_score").to_pylist()
    assert got == whole.column("anomaly_score").to_pylist()
    # A fresh detector on the second half does not give the same scores: the state mattered.
    fresh = tidegauge.Detector("mad", window=50).update(table.slice(20000))
    assert fresh.column("anomaly_score").to_pylist() != rest.column("anomaly_score").to_pylist()


def test_detector_accepts_polars_batches():
    t = small_table()
    d = tidegauge.Detector("zscore", window=8)
    a = d.update(pl.from_arrow(t.slice(0, 15)))
    b = d.update(pl.from_arrow(t.slice(15)))
    assert isinstance(a, pl.DataFrame)
    whole = tidegauge.score(t, detector="zscore", window=8)
    assert a["anomaly_score"].to_list() + b["anomaly_score"].to_list() == whole.column("anomaly_score").to_pylist()


def test_missing_column():
    with pytest.raises(tidegauge.MissingColumnError, match=r"no value column `reading` \(columns: sensor_id, ts, value\)") as e:
        tidegauge.score(small_table(), value="reading")
    assert isinstance(e.value, ValueError) and isinstance(e.value, tidegauge.Error)
    with pytest.raises(tidegauge.MissingColumnError, match="no key column `device`"):
        tidegauge.score(small_table(), key="device")


def test_non_numeric_value_column():
    t = small_table().append_column("label", pa.array(["x"] * 30))
    with pytest.raises(tidegauge.ColumnTypeError, match="value column `label` is Utf8, not numeric") as e:
        tidegauge.score(t, value="label")
    assert isinstance(e.value, TypeError)


def test_unknown_detector_names_the_known_ones():
    with pytest.raises(tidegauge.UnknownDetectorError, match="no detector called `zscor` .*zscore"):
        tidegauge.score(small_table(), detector="zscor")


def test_bad_param():
    with pytest.raises(tidegauge.ParamError, match="window"):
        tidegauge.score(small_table(), detector="zscore", window=-3)
    with pytest.raises(tidegauge.ParamError, match="windwo"):
        tidegauge.Detector("zscore", windwo=3)


def test_nan_and_missing_values_are_scored_not_crashed_on():
    t = pa.table({"sensor_id": ["a"] * 4, "ts": [1, 2, 3, 4], "value": [1.0, None, float("nan"), 2.0]})
    out = tidegauge.score(t, window=3)
    assert out.num_rows == 4
    assert out.column("is_anomaly").to_pylist()[1] in (False, None)


def test_not_arrow_data():
    with pytest.raises(tidegauge.ColumnTypeError, match="__arrow_c_stream__"):
        tidegauge.score([1, 2, 3])


def test_describe_is_the_cli_text(tidegauge_bin):
    cli = subprocess.run([str(tidegauge_bin), "describe", "mad"], check=True, capture_output=True, text=True).stdout
    assert tidegauge.describe("mad") == cli
    cli_json = subprocess.run(
        [str(tidegauge_bin), "describe", "--json", "zscore"], check=True, capture_output=True, text=True
    ).stdout
    assert tidegauge.describe("zscore", json=True) == cli_json
    with pytest.raises(tidegauge.UnknownDetectorError, match="no component called `nope`"):
        tidegauge.describe("nope")


def test_w1_200k_equals_the_oracle(w1_200k):
    import json
    import sys

    oracle = subprocess.run(
        [sys.executable, str(SHARED / "bench" / "w1_reference.py"), str(w1_200k)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    expected = {(e["sensor_id"], e["ts"]) for e in map(json.loads, oracle.splitlines())}
    out = tidegauge.score(pajson.read_json(w1_200k), detector="zscore", window=100, threshold=3.0)
    flagged = out.filter(out.column("is_anomaly"))
    got = set(zip(flagged.column("sensor_id").to_pylist(), flagged.column("ts").to_pylist()))
    assert len(expected) == 730
    assert got == expected


def test_detector_with_workers_returns_every_row_of_each_update():
    t = small_table()
    whole = tidegauge.score(t, detector="zscore", window=8, workers=2)
    d = tidegauge.Detector("zscore", window=8, workers=2)
    a = d.update(t.slice(0, 15))
    b = d.update(t.slice(15))
    got = a.column("anomaly_score").to_pylist() + b.column("anomaly_score").to_pylist()
    assert got == whole.column("anomaly_score").to_pylist()


def keyed_table(n: int = 3000) -> pa.Table:
    ids = [i % 7 for i in range(n)]
    values = [float((i * 37) % 101) + (50.0 if i % 500 == 499 else 0.0) for i in range(n)]
    return pa.table({"sensor_id": pa.array([f"s{k}" for k in ids]), "ts": list(range(n)), "value": values}), ids


@pytest.mark.parametrize("kind", ["dictionary", "large_string", "string_view", "int32", "dictionary_of_int"])
def test_key_columns_of_other_types_give_the_results_of_text_keys(kind):
    text, ids = keyed_table()
    if kind == "dictionary":
        key = text.column("sensor_id").dictionary_encode()
    elif kind == "large_string":
        key = text.column("sensor_id").cast(pa.large_string())
    elif kind == "string_view":
        key = text.column("sensor_id").cast(pa.string_view())
    else:
        key = pa.array(ids, pa.int32())
        if kind == "dictionary_of_int":
            key = key.dictionary_encode()
        text = text.set_column(0, "sensor_id", pa.array([str(k) for k in ids]))
    other = text.set_column(0, "sensor_id", key)
    expected = tidegauge.score(text, detector="zscore", window=50)
    got = tidegauge.score(other, detector="zscore", window=50)
    assert any(expected.column("is_anomaly").to_pylist())
    assert got.column("sensor_id").type == key.type
    for name in ["z", "anomaly_score", "is_anomaly", "reason"]:
        assert got.column(name).to_pylist() == expected.column(name).to_pylist(), name


def test_results_over_many_input_batches_are_those_of_one():
    t, _ = keyed_table()
    whole = tidegauge.score(t.combine_chunks(), detector="mad", window=30)
    chunked = tidegauge.score(pa.Table.from_batches(t.to_batches(max_chunksize=97)), detector="mad", window=30)
    with_workers = tidegauge.score(pa.Table.from_batches(t.to_batches(max_chunksize=97)), detector="mad", window=30, workers=3)
    for name in ["robust_z", "anomaly_score", "is_anomaly", "reason"]:
        assert chunked.column(name).to_pylist() == whole.column(name).to_pylist(), name
        assert with_workers.column(name).to_pylist() == whole.column(name).to_pylist(), name


def test_reason_is_given_for_anomalies_only():
    out = tidegauge.score(keyed_table()[0], detector="zscore", window=50)
    for flagged, why in zip(out.column("is_anomaly").to_pylist(), out.column("reason").to_pylist()):
        assert (why is not None) == flagged


def test_stubs_carry_the_detectors_own_docs():
    import sys

    from conftest import REPO
    from tidegauge import _native

    sys.path.insert(0, str(REPO / "python"))
    import stubgen
    from tidegauge._docs import NOT_PARAMS

    committed = (REPO / "python" / "tidegauge" / "__init__.pyi").read_text()
    generated = stubgen.generate(_native.detector_schema, tidegauge.detectors())
    assert generated == committed, "the stubs differ from the detectors' docs: run python/stubgen.py"
    # The stubs document every parameter of every detector.
    for name in tidegauge.detectors():
        assert f'detector: Literal["{name}"]' in committed
        for param, prop in json.loads(_native.detector_schema(name))["properties"].items():
            if param not in NOT_PARAMS:
                assert f"    {param}: " in committed, (name, param)


def test_detector_schemas_are_what_describe_prints(tidegauge_bin):
    from tidegauge import _native

    for name in tidegauge.detectors():
        cli = subprocess.run([str(tidegauge_bin), "describe", "--json", name], check=True, capture_output=True, text=True).stdout
        assert _native.detector_schema(name) in cli, name


def test_docstrings_are_what_describe_prints(tidegauge_bin):
    """`help(tidegauge.score)` and `help(tidegauge.Detector)` document every detector
    as the command line's `describe --json` does; `help(tidegauge.run)` the python sink."""
    import inspect

    from tidegauge import _native
    from tidegauge._docs import detector_doc

    score_doc = inspect.getdoc(tidegauge.score)
    init_doc = inspect.getdoc(tidegauge.Detector.__init__)
    for name in tidegauge.detectors():
        cli = subprocess.run([str(tidegauge_bin), "describe", "--json", name], check=True, capture_output=True, text=True).stdout
        schema = _native.detector_schema(name)
        assert schema in cli, name
        entry = textwrap.indent(detector_doc(name, json.loads(schema)), "    ")
        assert entry in score_doc, name
        assert entry in init_doc, name
    sink = textwrap.indent(tidegauge.describe("python"), "    ").rstrip()
    assert sink in inspect.getdoc(tidegauge.run)
    assert "buffer_batches" in sink
