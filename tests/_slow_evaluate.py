"""``python tests/_slow_evaluate.py ARGS`` runs ``evaluate.py ARGS``, pausing after each logged prediction.

The pause gives a test a wide, deterministic window to SIGKILL the run between two queries; nothing else
changes (the library has no test hooks).
"""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path

from fuseloc.eval import predictions

PAUSE_S = 0.4
EVALUATE = Path(__file__).resolve().parents[1] / "evaluate.py"

_log_one = predictions.PredictionLog.__call__


def _log_one_slowly(self, name, result):  # noqa: ANN001, ANN202
    _log_one(self, name, result)
    time.sleep(PAUSE_S)


predictions.PredictionLog.__call__ = _log_one_slowly  # type: ignore[method-assign]
sys.argv = [str(EVALUATE), *sys.argv[1:]]
runpy.run_path(str(EVALUATE), run_name="__main__")
