"""run.sh's step log: the wall time of each step.

run.sh appends a line per step event to EXP_DIR/log/run-sh.log, across
invocations (its step() function):

  [run.sh 10:00:05, +5s] train: starting
  [run.sh 10:30:05, +1805s] train: finished
  [run.sh 11:00:01, +1s] train: done before, skipping (exp/.done/train)

"+Ns" counts seconds from the start of that invocation of run.sh.
"""

import re
from pathlib import Path

_STEP_LINE = re.compile(r"^\[run\.sh [\d:]+, \+(\d+)s\] (\S+): (starting|finished)")


def read_run_log(path: Path) -> dict[str, float]:
    """{step: seconds} of the last completed run of each run.sh step, in the
    order the steps first finished.  The +Ns offsets restart with every
    invocation, and a step starts and finishes in the same invocation, so
    finished minus starting is its wall time; a step started but never
    finished (run.sh stopped) counts only if an earlier run finished."""
    durations: dict[str, float] = {}
    started: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        match = _STEP_LINE.match(line)
        if not match:
            continue
        offset, name, event = int(match.group(1)), match.group(2), match.group(3)
        if event == "starting":
            started[name] = offset
        elif name in started and offset >= started[name]:
            durations[name] = float(offset - started.pop(name))
    return durations
