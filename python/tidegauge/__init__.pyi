from typing import Any, Optional, TypeVar

_T = TypeVar("_T")

class Error(Exception): ...
class MissingColumnError(Error, ValueError): ...
class ColumnTypeError(Error, TypeError): ...
class UnknownDetectorError(Error, ValueError): ...
class ParamError(Error, ValueError): ...

def score(
    data: _T,
    detector: str = "zscore",
    key: Optional[str] = "sensor_id",
    value: str = "value",
    time: Optional[str] = "ts",
    **params: Any,
) -> _T:
    """Scores every row of `data` (pandas DataFrame, Polars DataFrame or PyArrow Table)
    with a fresh detector; returns the same type with the detector's statistic,
    `anomaly_score`, `is_anomaly` and `reason` columns appended."""

class Detector:
    """A detector fed batch by batch, whose state can be saved and restored."""
    def __init__(
        self,
        detector: str = "zscore",
        key: Optional[str] = "sensor_id",
        value: str = "value",
        time: Optional[str] = "ts",
        **params: Any,
    ) -> None: ...
    @property
    def name(self) -> str: ...
    def update(self, data: _T) -> _T:
        """Judges the rows of `data`, carrying every series' state over from earlier calls."""
    def save(self) -> bytes:
        """The detector, its settings and its state (the engine's checkpoint encoding)."""
    @classmethod
    def restore(cls, saved: bytes) -> "Detector":
        """A detector back from what `save` returned."""

def describe(name: str, json: bool = False) -> str:
    """What `tidegauge describe NAME` (`--json`) prints."""

def detectors() -> list[str]:
    """The names of the detectors."""
