"""The control plane loads no ML library: the operator, the plan, job validation, the CLI.

The operator's pods are sized for a process without torch (idle RSS about 90 MiB, the "idle"
line of `python bench/controller.py`, instead of about 310 MiB with torch, and a start-up
seconds shorter), so the operator, the plan, every stage's Params, formats and plan-time
checks, and `kompaktor --help` must not import torch, ONNX, ONNX Runtime, scikit-learn or
SciPy. Stage execution (`Stage.run`) imports them where it needs them.

Each check runs in a fresh interpreter (this one has torch loaded already) under
`-X importtime`, so a failure names the chain of imports that pulled a library in.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "onnx", "onnxruntime", "sklearn", "scipy")
ROOT = Path(__file__).resolve().parents[2]
JOBS = [ROOT / "examples" / name / "job.yaml" for name in ("digits-pipeline", "onnx-quantize")]

#: What each light entry point does; the probe then prints the heavy modules it loaded.
ENTRY_POINTS = {
    "operator": "import kompaktor.controller.handlers",
    "engine": "import kompaktor.engine, kompaktor.plan",
    "validation": (
        "from pathlib import Path\n"
        "from kompaktor.api.jobfile import load_job_file\n"
        "from kompaktor.stages import RESERVED_TYPES, registry, validate_job\n"
        "missing = set(RESERVED_TYPES) - set(registry())\n"
        "assert not missing, f'stage types not registered: {sorted(missing)}'\n"
        f"for path in {[str(job) for job in JOBS]!r}:\n"
        "    validate_job(load_job_file(Path(path)).spec)\n"
    ),
    "cli": (
        "import contextlib, io\n"
        "from kompaktor.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
    ),
}

_REPORT = (
    "\nimport json, sys\n"
    f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))\n"
)


def import_chain(importtime: str, library: str) -> list[str]:
    """The imports that led to `library`, outermost first, read from `-X importtime` output.

    Lines come in post-order (a module after everything it imported), indented by depth, so
    an import's importer is the next line indented less.
    """
    rows: list[tuple[int, str]] = []
    for line in importtime.splitlines():
        fields = line.split("|")
        if not line.startswith("import time:") or len(fields) != 3:
            continue
        name = fields[2].rstrip()
        rows.append((len(name) - len(name.lstrip()), name.strip()))
    for index, (depth, name) in enumerate(rows):
        if name.split(".")[0] != library:
            continue
        chain = [name]
        for later_depth, later in rows[index + 1 :]:
            if later_depth < depth:
                chain.append(later)
                depth = later_depth
        chain.reverse()
        first = next(i for i, n in enumerate(chain) if n.split(".")[0] == library)
        return chain[: first + 1]
    return []


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_entry_point_imports_no_ml_library(entry: str) -> None:
    probe = ENTRY_POINTS[entry] + _REPORT
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", probe],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    chains = "\n".join(f"  {' -> '.join(import_chain(done.stderr, name))}" for name in loaded)
    assert not loaded, f"{entry} imported {', '.join(loaded)}:\n{chains}"


def test_import_chain_follows_the_importers() -> None:
    importtime = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:        10 |         10 |       torch._C",
            "import time:        20 |         30 |     torch",
            "import time:         5 |         35 |   kompaktor.models.io",
            "import time:         1 |          1 |   kompaktor.errors",
            "import time:         5 |         41 | kompaktor.models",
        ]
    )
    assert import_chain(importtime, "torch") == ["kompaktor.models", "kompaktor.models.io", "torch"]
    assert import_chain(importtime, "onnx") == []
