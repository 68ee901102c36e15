"""How long a kind run of the suite takes, estimated from what a (fast) run asked of its mesh.

Every mesh counts the operations tests ask of it (``Mesh.operations``) and its istiod environment changes.
On kind each has a cost dominated by Kubernetes, not by the tests' own traffic: an istiod rollout, a pod
start, a 30 s preStop. The costs below are measured, not assumed: a whole kind run on this project's
machines (``make e2e-kind``, 2 cores shared with other work, load 5-11; the offline node image with every
image pre-loaded, Istio 1.31.0 with upstream Envoy 1.39.3: 46 passed, 11 skipped, 21 xpassed in 955 s),
read with ``python -m harness.report.estimate --calibrate reports/<that run>.yaml`` (seconds per operation
= its ``operation_seconds`` / ``operations``). A GitHub runner has 4 cores but pulls its images (node image,
Istio, python) once per job: about a minute more set-up, less per operation.
``python -m harness.report.estimate reports/<report>.yaml`` prints the estimate for a report's counts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.report.schema import load


@dataclass(frozen=True)
class Cost:
    seconds: float
    why: str


FIXED = Cost(165, "measured: kind create 60 s, Istio base+istiod+gateway by Helm with --wait 27 s, app namespace "
                  "and first 3 pods 10 s, at the end the namespace and the cluster deleted 66 s")
TRAFFIC = Cost(145, "measured: the run's time outside set-up, close and counted operations (the tests' own "
                    "requests through kind's port mapping, the gateway pod and sidecars; admin reads)")
PER_OPERATION = {
    "istiod_env_changes": Cost(15.5, "measured 46 s / 3: helm upgrade --wait of istiod (a new istiod pod ready), "
                                     "then the gateway's xDS stream reconnects and the config converges"),
    "reset": Cost(1.4, "measured 108 s / 79: delete the DestinationRules, re-apply the base manifests, converge; "
                       "bringing back the 3 pods a scaling test changed is priced in that test's scale"),
    "apply": Cost(0.6, "measured 121 s / 220: server-side apply, istiod's debounce and push, the gateway's "
                       "config_dump read by exec"),
    "delete": Cost(0.5, "measured 70 s / 145: as apply"),
    "scale": Cost(5.1, "measured 172 s / 34: each step twice (the test's, then reset's way back); a new pod: "
                       "schedule, start the pre-loaded image and sidecar, readiness, the EndpointSlice and push"),
    "delete_pod": Cost(7.8, "measured 39 s / 5: a replacement pod starts; the deleted one goes within its 2 s grace"),
    "start_draining": Cost(0.5, "measured 1 s / 2: the pod's deletionTimestamp reaches the gateway as DRAINING "
                                "or removed"),
    "restart_rollout": Cost(41.6, "measured 83 s / 2: surge pods one after another, then the old pods leave the "
                                  "gateway after their 30 s preStop and the app's linger"),
    "upgrade_data_plane": Cost(150, "not measured (no second Istio release on kind here): helm upgrade of istiod "
                                    "and the gateway to another Istio release, with --wait"),
}


def counts(run: dict[str, Any]) -> dict[str, int]:
    """The counted operations of a report's ``run`` section, with the istiod environment changes."""
    found = dict(run.get("operations") or {})
    found["istiod_env_changes"] = int(run.get("istiod_env_changes") or 0)
    return found


def estimate_seconds(run: dict[str, Any]) -> float:
    """Set-up, traffic, and each counted operation at its cost (operations not in the table cost nothing)."""
    return FIXED.seconds + TRAFFIC.seconds + sum(PER_OPERATION[name].seconds * count
                               for name, count in counts(run).items() if name in PER_OPERATION)


def breakdown(run: dict[str, Any]) -> list[str]:
    lines = [f"fixed set-up: {FIXED.seconds:.0f} s ({FIXED.why})", f"traffic: {TRAFFIC.seconds:.0f} s ({TRAFFIC.why})"]
    for name, count in sorted(counts(run).items()):
        if name in PER_OPERATION and count:
            cost = PER_OPERATION[name]
            lines.append(f"{name}: {count} x {cost.seconds:g} s = {count * cost.seconds:.0f} s ({cost.why})")
    lines.append(f"estimated kind run: {estimate_seconds(run) / 60:.0f} min")
    return lines


def calibration(run: dict[str, Any]) -> list[str]:
    """What a measured run (a kind report's ``run`` section) says each cost is: seconds per operation
    (``operation_seconds`` / ``operations``), the set-up steps, and the rest of the mesh's life (the tests'
    own traffic). The constants above are set from such a run."""
    spent = dict(run.get("operation_seconds") or {})
    lines = []
    setup = dict(run.get("setup_seconds") or {})
    if "close_seconds" in run:
        setup["close"] = float(run["close_seconds"])
    if setup:
        lines.append(f"fixed set-up and close: {sum(setup.values()):.0f} s (" + ", ".join(
            f"{name} {seconds:.0f} s" for name, seconds in setup.items()) + ")")
    for name, count in sorted(counts(run).items()):
        if count and name in spent:
            lines.append(f"{name}: {spent[name]:.0f} s / {count} = {spent[name] / count:.1f} s each")
    if "mesh_seconds" in run:
        rest = float(run["mesh_seconds"]) - sum(setup.values()) - sum(spent.values())
        lines.append(f"traffic and everything else: {rest:.0f} s of the mesh's {float(run['mesh_seconds']):.0f} s")
    return lines


def main(argv: list[str]) -> int:
    calibrate = "--calibrate" in argv
    argv = [a for a in argv if a != "--calibrate"]
    if len(argv) != 1:
        print("usage: python -m harness.report.estimate [--calibrate] REPORT.yaml", file=sys.stderr)
        return 2
    path = Path(argv[0])
    try:
        run = load(path).run
    except (OSError, yaml.YAMLError, ValueError) as error:
        print(f"error: cannot read {path}: {error}", file=sys.stderr)
        return 2
    if not run:
        print(f"error: {path} has no run section (written by a run before operation counts existed)",
              file=sys.stderr)
        return 2
    if calibrate and not run.get("operation_seconds"):
        print(f"error: {path} has no operation_seconds (written before operations were timed)", file=sys.stderr)
        return 2
    print("\n".join(calibration(run) if calibrate else breakdown(run)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
