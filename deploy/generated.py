#!/usr/bin/env python3
"""Writes the files under deploy/k8s that are copies of others in another form.

kustomize reads files only from inside a component's directory, and some
objects need the content in another shape, so three files are derived:

  deploy/monitoring/carbridge-rules.yml
      -> deploy/k8s/components/monitoring/prometheus-rule.yaml
         (the same groups as a PrometheusRule's spec)
  deploy/monitoring/carbridge-dashboard.json
      -> deploy/k8s/components/monitoring/carbridge-dashboard.json
         (a copy)
  deploy/k8s/components/seccomp-io-uring/io-uring.json
      -> deploy/k8s/components/seccomp-io-uring-spo/seccomp-profile.yaml
         (the same profile as a Security Profiles Operator SeccompProfile)

    python3 deploy/generated.py           write them
    python3 deploy/generated.py --check   exit 1 if any differs (check-k8s.sh)

Edit the sources, never the derived files. Standard library only.
"""

import json
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent
K8S = DEPLOY / "k8s"
MONITORING = DEPLOY / "monitoring"


def header(source: str) -> str:
    return (
        f"# GENERATED from {source} by `python3 deploy/generated.py`:\n"
        "# edit that file and run the command; scripts/check-k8s.sh fails when\n"
        "# this one differs.\n"
    )


def prometheus_rule() -> str:
    """The rules file's groups, indented under a PrometheusRule's spec."""
    source = MONITORING / "carbridge-rules.yml"
    lines = source.read_text().splitlines()
    # The file's own opening comment is about the file; start at `groups:`.
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = "\n".join(("  " + line) if line else "" for line in lines[start:])
    return (
        header("deploy/monitoring/carbridge-rules.yml")
        + "apiVersion: monitoring.coreos.com/v1\n"
        "kind: PrometheusRule\n"
        "metadata:\n"
        "  name: carbridge\n"
        "  labels:\n"
        "    app.kubernetes.io/name: carbridge\n"
        "spec:\n" + body + "\n"
    )


def dashboard() -> str:
    return (MONITORING / "carbridge-dashboard.json").read_text()


# Where components/seccomp-io-uring-spo's gateway patch looks for it:
# operator/<namespace>/<name>.json under the kubelet's seccomp directory.
SPO_NAMESPACE = "carbridge-seccomp"
SPO_NAME = "io-uring"


def seccomp_profile() -> str:
    """io-uring.json as a SeccompProfile (security-profiles-operator.x-k8s.io/v1beta1).

    The CRD has no defaultErrnoRet; runc answers EPERM (1) for
    SCMP_ACT_ERRNO without one, so a profile whose defaultErrnoRet is 1
    says the same without it. Any other value is refused here.
    """
    source = K8S / "components" / "seccomp-io-uring" / "io-uring.json"
    profile = json.loads(source.read_text())
    known = {"defaultAction", "defaultErrnoRet", "architectures", "syscalls"}
    unknown = set(profile) - known
    if unknown:
        raise SystemExit(f"{source}: fields the SeccompProfile cannot carry: {sorted(unknown)}")
    if profile.get("defaultErrnoRet", 1) != 1:
        raise SystemExit(f"{source}: defaultErrnoRet other than 1 (EPERM) has no SeccompProfile field")
    out = [
        header("deploy/k8s/components/seccomp-io-uring/io-uring.json").rstrip("\n"),
        "apiVersion: security-profiles-operator.x-k8s.io/v1beta1",
        "kind: SeccompProfile",
        "metadata:",
        f"  name: {SPO_NAME}",
        f"  namespace: {SPO_NAMESPACE}",
        "  labels:",
        "    app.kubernetes.io/component: seccomp",
        "spec:",
        f"  defaultAction: {profile['defaultAction']}",
        "  architectures:",
    ]
    out += [f"    - {arch}" for arch in profile["architectures"]]
    out.append("  syscalls:")
    for rule in profile["syscalls"]:
        extra = set(rule) - {"names", "action", "errnoRet", "args"}
        if extra:
            raise SystemExit(f"{source}: rule fields the SeccompProfile cannot carry: {sorted(extra)}")
        out.append(f"    - action: {rule['action']}")
        if "errnoRet" in rule:
            out.append(f"      errnoRet: {int(rule['errnoRet'])}")
        out.append("      names:")
        out += [f"        - {name}" for name in rule["names"]]
        if rule.get("args"):
            out.append("      args:")
            for arg in rule["args"]:
                out.append(f"        - index: {int(arg['index'])}")
                out.append(f"          value: {int(arg.get('value', 0))}")
                if "valueTwo" in arg:
                    out.append(f"          valueTwo: {int(arg['valueTwo'])}")
                out.append(f"          op: {arg['op']}")
    return "\n".join(out) + "\n"


TARGETS = {
    K8S / "components" / "monitoring" / "prometheus-rule.yaml": prometheus_rule,
    K8S / "components" / "monitoring" / "carbridge-dashboard.json": dashboard,
    K8S / "components" / "seccomp-io-uring-spo" / "seccomp-profile.yaml": seccomp_profile,
}


def main() -> int:
    check = sys.argv[1:] == ["--check"]
    if sys.argv[1:] not in ([], ["--check"]):
        print(__doc__, file=sys.stderr)
        return 2
    stale = []
    for path, make in TARGETS.items():
        text = make()
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        if check:
            stale.append(path.relative_to(DEPLOY.parent))
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(DEPLOY.parent)}")
    if stale:
        for path in stale:
            print(f"FAIL  {path} differs from its source: run python3 deploy/generated.py",
                  file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
