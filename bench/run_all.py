"""Run every benchmark (``bench/bench_*.py``) and write one JSON + markdown summary (``make bench``).

Each benchmark prints its own figures (and, first, the CPU it ran on); this runner records, per script, the command,
exit status, wall time and everything it printed, under a header naming the machine (CPU capability, native bf16,
torch version, load average). The files are ``bench/results/<UTC time>_<capability>.{json,md}`` so that two
machines' runs can be diffed side by side. Peer comparisons run when their checkout variables are set
(``PEER_DALLE=``, ``PEER_DALLE2=``) and are skipped by the scripts otherwise. A script's last ``BENCH_JSON {...}``
line, if it prints one, is stored parsed as that script's ``summary``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> dict:
    import torch

    sys.path.insert(0, str(HERE.parent))
    from zoo.precision import cpu_has_native_bf16, describe_cpu

    return {
        "cpu": describe_cpu(),
        "capability": str(torch.backends.cpu.get_cpu_capability()),
        "native_bf16": cpu_has_native_bf16(),
        "torch": torch.__version__,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "peers": {k: os.environ.get(k) for k in ("PEER_DALLE", "PEER_DALLE2")},
    }


def run(script: Path, timeout: float) -> dict:
    cmd = [sys.executable, str(script)]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
        status, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as e:
        status, out, err = (
            "timeout",
            (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""),
            f"timed out after {timeout:.0f} s",
        )
    # a script may end its output with one ``BENCH_JSON {...}`` line (its figures, machine-readable): kept as "summary"
    tagged = [ln[len("BENCH_JSON ") :] for ln in out.splitlines() if ln.startswith("BENCH_JSON ")]
    try:
        summary = json.loads(tagged[-1]) if tagged else None
    except json.JSONDecodeError:
        summary = None
    return {
        "script": script.name,
        "command": " ".join(cmd),
        "status": status,
        "seconds": round(time.perf_counter() - t0, 1),
        "stdout": out,
        "stderr_tail": err[-2000:],
        "summary": summary,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="script names (e.g. bench_unet.py); default: every bench_*.py")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per script")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.name in set(args.only)]
    info = machine()
    print(info["cpu"], flush=True)
    results = []
    for s in scripts:
        print(f"== {s.name}", flush=True)
        r = run(s, args.timeout)
        print(r["stdout"], end="", flush=True)
        print(f"== {s.name}: status {r['status']} in {r['seconds']} s", flush=True)
        results.append(r)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"{stamp}_{info['capability']}"
    base.with_suffix(".json").write_text(json.dumps({"machine": info, "results": results}, indent=2))
    lines = [
        f"# Benchmarks {stamp}",
        "",
        f"`{info['cpu']}`, torch {info['torch']}, load {info['load_average']}",
        "",
        "| script | status | seconds |",
        "|---|---|---|",
    ]
    lines += [f"| {r['script']} | {r['status']} | {r['seconds']} |" for r in results]
    for r in results:
        lines += ["", f"## {r['script']}", "", "```", r["stdout"].rstrip(), "```"]
    base.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {base}.json and {base}.md")
    if any(r["status"] != 0 for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
