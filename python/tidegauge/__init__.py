"""tidegauge's anomaly detectors on pandas, Polars and PyArrow data.

The detectors are the engine's own (the same code `tidegauge run` and `tidegauge score`
run); data crosses into them through the Arrow C stream interface, without a Python
object per row, and the GIL is released while they work.

>>> import pyarrow as pa, tidegauge
>>> t = pa.table({"sensor_id": ["a"] * 5, "ts": [1, 2, 3, 4, 5], "value": [1.0, 1.1, 0.9, 1.0, 9.0]})
>>> tidegauge.score(t, detector="zscore", window=4).column_names[-3:]
['anomaly_score', 'is_anomaly', 'reason']
"""

from __future__ import annotations

import json
from typing import Any, Optional

from . import _native
from ._errors import (
    ColumnTypeError,
    Error,
    MissingColumnError,
    ParamError,
    UnknownDetectorError,
)

__all__ = [
    "score",
    "Detector",
    "describe",
    "detectors",
    "Error",
    "MissingColumnError",
    "ColumnTypeError",
    "UnknownDetectorError",
    "ParamError",
]


def _kind(data: Any) -> str:
    """Which library `data` comes from: "pandas", "polars" or "arrow"."""
    module = type(data).__module__.split(".")[0]
    if module == "pandas":
        return "pandas"
    if module == "polars":
        return "polars"
    return "arrow"


def _to_arrow(data: Any, kind: str) -> Any:
    if kind == "pandas":
        import pyarrow as pa

        # The index is the caller's; the rows keep their order, and the result gets it back.
        return pa.Table.from_pandas(data, preserve_index=False)
    if kind == "polars":
        return data.to_arrow()
    return data


def _table(stream: Any) -> Any:
    """The batches of `stream` as a PyArrow Table, without copying them. Not through
    `pyarrow.table(...)`: it imports pandas to ask whether the object is a DataFrame, which
    costs more than scoring 200,000 rows the first time."""
    import pyarrow as pa

    if hasattr(pa.RecordBatchReader, "from_stream"):  # pyarrow >= 15
        return pa.RecordBatchReader.from_stream(stream).read_all()
    return pa.table(stream)


def _from_arrow(stream: Any, like: Any, kind: str) -> Any:
    import pyarrow as pa

    if kind == "polars":
        import polars as pl

        return pl.DataFrame(_table(stream))
    table = _table(stream)
    if kind == "pandas":
        frame = table.to_pandas()
        frame.index = like.index
        return frame
    if isinstance(like, pa.RecordBatch):
        return table.combine_chunks().to_batches()[0] if table.num_rows else pa.RecordBatch.from_pylist([], schema=table.schema)
    return table


def _settings(params: dict) -> str:
    try:
        return json.dumps(params)
    except TypeError as e:
        raise ParamError(f"settings must be numbers, strings, booleans or lists of them: {e}") from None


def score(
    data: Any,
    detector: str = "zscore",
    key: Optional[str] = "sensor_id",
    value: str = "value",
    time: Optional[str] = "ts",
    **params: Any,
) -> Any:
    """Scores every row of `data` with a fresh `detector`.

    `data` is a pandas DataFrame, a Polars DataFrame or a PyArrow Table (or anything with
    ``__arrow_c_stream__``); the result is of the same type, with the detector's columns
    appended: its statistic, ``anomaly_score``, ``is_anomaly`` and ``reason``.

    Each row is one reading: `key` names the series (``None``: one series), `value` the
    reading (numeric) and `time` its time (integer or timestamp; ``None``: the row
    number). `params` are the detector's settings, as in a pipeline file
    (``tidegauge.describe(detector)`` lists them), e.g. ``window=200``.

    Raises MissingColumnError, ColumnTypeError, UnknownDetectorError or ParamError
    (all subclasses of tidegauge.Error) with the command line's messages.
    """
    kind = _kind(data)
    stream = _native.score(_to_arrow(data, kind), detector, key, value, time, _settings(params))
    return _from_arrow(stream, data, kind)


class Detector:
    """A detector fed batch by batch, whose state can be saved and restored.

    >>> d = tidegauge.Detector("mad", window=200)
    >>> scored = d.update(first_batch)
    >>> state = d.save()
    >>> d2 = tidegauge.Detector.restore(state)   # goes on where d left off
    """

    def __init__(
        self,
        detector: str = "zscore",
        key: Optional[str] = "sensor_id",
        value: str = "value",
        time: Optional[str] = "ts",
        **params: Any,
    ) -> None:
        self._columns = {"key": key, "value": value, "time": time}
        self._native = _native.NativeDetector(detector, key, value, time, _settings(params))

    @property
    def name(self) -> str:
        """The detector's type name."""
        return self._native.spec()[0]

    def update(self, data: Any) -> Any:
        """Judges the rows of `data` (same types as `score`), carrying the state of every
        series over from earlier calls; returns them with the detector's columns."""
        kind = _kind(data)
        return _from_arrow(self._native.update(_to_arrow(data, kind)), data, kind)

    def save(self) -> bytes:
        """The detector, its settings and the state of every series, as bytes; the state
        is in the engine's checkpoint encoding."""
        name, settings = self._native.spec()
        state = bytes(self._native.checkpoint())
        head = json.dumps({"detector": name, "settings": json.loads(settings), **self._columns}).encode()
        return b"TGPY1\n" + len(head).to_bytes(4, "little") + head + state

    @classmethod
    def restore(cls, saved: bytes) -> "Detector":
        """A detector back from what `save` returned."""
        if not saved.startswith(b"TGPY1\n") or len(saved) < 10:
            raise Error("not a saved tidegauge detector")
        n = int.from_bytes(saved[6:10], "little")
        head = json.loads(saved[10 : 10 + n])
        d = cls(head["detector"], head["key"], head["value"], head["time"], **head["settings"])
        d._native.restore(saved[10 + n :])
        return d


def describe(name: str, json: bool = False) -> str:
    """The parameters of the component `name`, as ``tidegauge describe NAME`` prints
    them (``json=True``: its JSON Schema, as ``--json``)."""
    return _native.describe(name, json)


def detectors() -> list:
    """The names of the detectors."""
    return list(_native.detectors())
