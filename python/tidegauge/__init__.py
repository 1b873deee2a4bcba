"""tidegauge's anomaly detectors on pandas, Polars and PyArrow data.

The detectors are the engine's own (the same code `tidegauge run` and `tidegauge score`
run); data crosses into them through the Arrow C stream interface, without a Python
object per row, and the GIL is released while they work.

>>> import pyarrow as pa, tidegauge
>>> t = pa.table({"sensor_id": ["a"] * 5, "ts": [1, 2, 3, 4, 5], "value": [1.0, 1.1, 0.9, 1.0, 9.0]})
>>> tidegauge.score(t, detector="zscore", window=4).column_names[-3:]
['anomaly_score', 'is_anomaly', 'reason']

Whole pipeline files run with `run`: a sink of type ``python`` hands its batches to the
iterator it returns, as ``pyarrow.RecordBatch``.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from . import _native
from ._errors import (
    ColumnTypeError,
    Error,
    InvalidPipelineError,
    MissingColumnError,
    ParamError,
    PipelineError,
    UnknownDetectorError,
)

__all__ = [
    "score",
    "Detector",
    "run",
    "Output",
    "describe",
    "detectors",
    "Error",
    "MissingColumnError",
    "ColumnTypeError",
    "UnknownDetectorError",
    "ParamError",
    "InvalidPipelineError",
    "PipelineError",
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


def run(path: Any = None, *, text: Optional[str] = None) -> Any:
    """Runs the pipeline file `path` (or the pipeline in `text`) in the background and
    returns what its sinks of type ``python`` receive.

    With one ``python`` sink, the result is an `Output`: an iterator of
    ``pyarrow.RecordBatch`` (the sink's input batches, handed over through the Arrow C
    data interface). With several, a dict of them by sink name; each sink's buffer is its
    own, so a sink nobody reads stalls the pipeline once its buffer is full (read them
    from threads, or give the others ``buffer_batches`` room). Without one, an `Output`
    that yields nothing and ends when the pipeline does (e.g. one writing JSON Lines).

    The file is loaded, checked and built in the call: an invalid file raises
    InvalidPipelineError with ``tidegauge check``'s report, a component that cannot be
    built (a missing file, a server down) PipelineError. A failure while running raises
    PipelineError, with ``tidegauge run``'s message, from the iteration, after the
    batches that came before it. Waiting for a batch releases the GIL; a batch counts as
    delivered (acknowledged to its source) once the iterator has returned it.

    Closing an output (``close()``, leaving a ``with`` block, or dropping every output of
    the run) stops the pipeline as Ctrl-C stops ``tidegauge run``: sources stop, stages
    flush, sinks close; it returns when the pipeline's threads are gone. A
    KeyboardInterrupt while waiting does the same and propagates. The pipeline runs as
    ``tidegauge run`` runs it, less what belongs to the command: no admin API (an
    ``[admin]`` table is not served), no reload, no summary table.

    >>> with tidegauge.run("pipeline.toml") as out:      # [sinks.scores] type = "python"
    ...     for batch in out:
    ...         print(batch.num_rows, pc.sum(batch["is_anomaly"]))
    """
    if (path is None) == (text is None):
        raise TypeError("run() takes a pipeline file or text=, not both nor neither")
    import os

    outputs = _native.run(os.fspath(path) if path is not None else None, text)
    if len(outputs) == 1:
        name, native = outputs[0]
        return Output(name, native)
    return {name: Output(name, native) for name, native in outputs}


class Output:
    """The batches one ``python`` sink of a running pipeline receives, as
    ``pyarrow.RecordBatch``; see `run`. Closing it stops the pipeline."""

    def __init__(self, name: str, native: Any) -> None:
        self.name = name
        self._native = native

    def __iter__(self) -> "Output":
        return self

    def __next__(self) -> Any:
        batch = self._native.next()
        if batch is None:
            raise StopIteration
        import pyarrow as pa

        return pa.record_batch(batch)

    def read_all(self) -> Any:
        """Every batch still to come, until the pipeline ends, as one PyArrow Table
        (``None`` when none came)."""
        import pyarrow as pa

        batches = list(self)
        return pa.Table.from_batches(batches) if batches else None

    def close(self) -> None:
        """Stops the pipeline (every output of it ends) and waits until it has."""
        self._native.close()

    def __enter__(self) -> "Output":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<tidegauge.Output {self.name!r}>"


def describe(name: str, json: bool = False) -> str:
    """The parameters of the component `name`, as ``tidegauge describe NAME`` prints
    them (``json=True``: its JSON Schema, as ``--json``)."""
    return _native.describe(name, json)


def detectors() -> list:
    """The names of the detectors."""
    return list(_native.detectors())


def _document() -> None:
    """Appends the detectors' own documentation (their JSON Schemas, what
    ``tidegauge describe --json NAME`` prints) to the docstrings of `score` and
    `Detector`, and the ``python`` sink's to `run`'s, so ``help()`` shows what the
    command line describes; ``test_docstrings_are_what_describe_prints`` checks it."""
    import textwrap

    from ._docs import detectors_doc

    entries = detectors_doc(_native.detector_schema, detectors())
    # Indented as the hand-written part of each docstring is, so help() dedents them alike.
    score.__doc__ = (score.__doc__ or "") + "\n\n    Detectors:\n\n" + textwrap.indent(entries, "        ")
    Detector.__init__.__doc__ = (
        "A detector `detector` with settings `params`; `key`, `value` and `time` as in `score`.\n\n"
        "    Detectors:\n\n" + textwrap.indent(entries, "        ")
    )
    sink = describe("python")
    run.__doc__ = (run.__doc__ or "") + '\n\n    ``tidegauge.describe("python")``:\n\n' + textwrap.indent(sink, "        ")


_document()
