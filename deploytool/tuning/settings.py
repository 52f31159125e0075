"""How long and where to tune: the options tune and compile --tune share."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ..targets import TargetSpec
from .database import default_db_dir


@dataclass


class TuneSettings:
    """How long to tune; None means the default."""

    trials: int | None = None
    time_budget: float | None = None  # seconds
    db: Path | None = None
    seed: int | None = 0
    rpc_tracker: str | None = None  # HOST:PORT of a TVM RPC tracker
    rpc_key: str | None = None  # the device key the boards registered with the tracker
    rpc: str | None = None  # HOST:PORT of a single TVM RPC server

    def resolved_db(self, target: TargetSpec) -> Path:
        return self.db or default_db_dir(target)

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}
