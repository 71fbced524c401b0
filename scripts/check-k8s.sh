#!/usr/bin/env bash
# Offline checks of the Kubernetes manifests in deploy/k8s, one line per
# check; stops at the first failure (exit 1).
#
#   scripts/check-k8s.sh
#
# For every overlay (deploy/k8s/overlays/*):
#   - `kubectl kustomize` renders it;
#   - kubernetes-validate --strict accepts every object for Kubernetes
#     1.30 and 1.33 (a kind it has no schema for fails too);
#   - the rendered gateway.toml parses with `gateway check-config`, when a
#     gateway binary is at hand (GATEWAY_BIN, target/release, target/debug);
#   - policy checks on the rendered objects (below, in Python).
# Before that: yamllint --strict (deploy/k8s/.yamllint) on the sources, and
# the seccomp profile, which is also compiled with the machine's libseccomp
# when it has one.
#
# Installs what it lacks: kubernetes-validate (pip), yamllint (apt), PyYAML.
# kubectl must be there already.
set -euo pipefail
cd "$(dirname "$0")/.."

k8s=${K8S_DIR:-deploy/k8s}  # K8S_DIR: check another copy of the tree
versions=(1.30 1.33)
profile=$k8s/components/seccomp-io-uring/io-uring.json

ok() { printf 'ok    %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*" >&2; exit 1; }
note() { printf 'note  %s\n' "$*"; }

sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    $sudo_cmd apt-get update -qq >/dev/null
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- Tools --------------------------------------------------------------------
command -v kubectl >/dev/null || fail "kubectl not found: it renders the overlays (kubectl kustomize)"
ok "tool kubectl ($(kubectl version --client 2>/dev/null | awk '/Kustomize/ {print "kustomize " $3}'))"

if ! command -v yamllint >/dev/null; then
  note "installing yamllint (apt)"
  apt_install yamllint || fail "could not install yamllint"
fi
ok "tool yamllint ($(yamllint --version | awk '{print $2}'))"

# Python with PyYAML for the policy checks; kubernetes-validate is called as
# a module of the same interpreter, so PATH does not matter.
py=python3
if ! "$py" -c 'import kubernetes_validate' 2>/dev/null; then
  note "installing kubernetes-validate (pip)"
  "$py" -m pip install --quiet kubernetes-validate 2>/dev/null ||
    "$py" -m pip install --quiet --user --break-system-packages kubernetes-validate ||
    fail "could not install kubernetes-validate"
fi
if ! "$py" -c 'import yaml' 2>/dev/null; then
  note "installing PyYAML (apt python3-yaml)"
  apt_install python3-yaml || true
  "$py" -c 'import yaml' 2>/dev/null || "$py" -m pip install --quiet pyyaml ||
    fail "no PyYAML for $py"
fi
ok "tool kubernetes-validate ($("$py" -m kubernetes_validate --version 2>&1)), PyYAML"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- Sources ------------------------------------------------------------------
yamllint --strict -c "$k8s/.yamllint" "$k8s" || fail "yamllint --strict $k8s"
ok "yamllint --strict $k8s"

cat >"$tmp/seccomp.py" <<'PY'
import ctypes, ctypes.util, json, os, sys

path = sys.argv[1]
def fail(msg):
    print(f"FAIL  {path}: {msg}", file=sys.stderr)
    sys.exit(1)

prof = json.load(open(path))
# SECCOMP_DROP: calls to leave out (to show that the profile matters);
# SECCOMP_EXEC: what to run under it (JSON list; default `true`).
drop = set(filter(None, os.environ.get("SECCOMP_DROP", "").split(",")))
run = json.loads(os.environ.get("SECCOMP_EXEC", '["true"]'))
if os.environ.get("SECCOMP_EXEC"):
    quiet = True
else:
    quiet = False
if prof.get("defaultAction") != "SCMP_ACT_ERRNO":
    fail("defaultAction must be SCMP_ACT_ERRNO")
allowed = {n for r in prof["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args")
           for n in r["names"]}
for needed in ("io_uring_setup", "io_uring_enter", "io_uring_register", "sched_getaffinity",
               "membarrier", "mmap", "futex", "ioctl", "epoll_wait", "connect"):
    if needed not in allowed:
        fail(f"{needed} is not allowed")
if not quiet:
    print(f"ok    seccomp profile: {len(allowed)} calls allowed, io_uring among them")

# Compile and load it the way runc does, in a child process that then runs
# `true`: every name resolves and libseccomp takes every rule.
name = ctypes.util.find_library("seccomp")
if not name:
    print("note  no libseccomp on this machine: the profile was not compiled")
    sys.exit(0)
pid = os.fork()
if pid == 0:
    try:
        lib = ctypes.CDLL(name)
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        class Cmp(ctypes.Structure):
            _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                        ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                               ctypes.c_uint, ctypes.POINTER(Cmp)]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        ops = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
               "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
        arches = {"SCMP_ARCH_X86_64": b"x86_64", "SCMP_ARCH_AARCH64": b"aarch64"}
        def action(rule):
            if rule["action"] == "SCMP_ACT_ALLOW":
                return 0x7FFF0000
            if rule["action"] == "SCMP_ACT_ERRNO":
                return 0x00050000 | rule.get("errnoRet", prof.get("defaultErrnoRet", 1))
            raise ValueError(f"action {rule['action']}")
        ctx = lib.seccomp_init(action(dict(action=prof["defaultAction"])))
        for arch in prof["architectures"]:
            rc = lib.seccomp_arch_add(ctx, lib.seccomp_arch_resolve_name(arches[arch]))
            if rc not in (0, -17):  # -EEXIST: the native one
                raise ValueError(f"architecture {arch}: {os.strerror(-rc)}")
        unknown = []
        for rule in prof["syscalls"]:
            cmps = [Cmp(a["index"], ops[a["op"]], a["value"], a.get("valueTwo", 0))
                    for a in rule.get("args", [])]
            array = (Cmp * len(cmps))(*cmps) if cmps else None
            for call in rule["names"]:
                if call in drop:
                    continue
                nr = lib.seccomp_syscall_resolve_name(call.encode())
                if nr == -1:
                    unknown.append(call)
                    continue
                rc = lib.seccomp_rule_add_array(ctx, action(rule), nr, len(cmps), array)
                if rc:
                    raise ValueError(f"{call}: {os.strerror(-rc)}")
        if unknown:
            raise ValueError(f"unknown to libseccomp: {unknown}")
        rc = lib.seccomp_load(ctx)
        if rc:
            raise ValueError(f"seccomp_load: {os.strerror(-rc)}")
        os.execvp(run[0], run)
    except Exception as error:  # noqa: BLE001 - reported, child exits
        print(f"FAIL  {path}: {error}", file=sys.stderr)
        os._exit(1)
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
if quiet:
    sys.exit(code)
if code != 0:
    sys.exit(1)
print(f"ok    seccomp profile compiles with {name} and a process runs under it")
PY
"$py" - "$profile" <"$tmp/seccomp.py" || exit 1

# --- Overlays -----------------------------------------------------------------
overlays=()
for dir in "$k8s"/overlays/*; do
  [ -f "$dir/kustomization.yaml" ] && overlays+=("$(basename "$dir")")
done
((${#overlays[@]})) || fail "no overlays under $k8s/overlays"

# Every component is used by some overlay, so every one is rendered below.
for dir in "$k8s"/components/*; do
  component=$(basename "$dir")
  grep -qs -- "components/$component\$" "$k8s"/overlays/*/kustomization.yaml ||
    fail "component $component is used by no overlay, so nothing checks it"
done
ok "every component is used by an overlay"

gateway_bin=${GATEWAY_BIN:-}
if [ -z "$gateway_bin" ]; then
  for candidate in target/release/gateway target/debug/gateway; do
    [ -x "$candidate" ] && { gateway_bin=$candidate; break; }
  done
fi

for overlay in "${overlays[@]}"; do
  out="$tmp/$overlay.yaml"
  kubectl kustomize "$k8s/overlays/$overlay" >"$out" 2>"$tmp/err" ||
    { cat "$tmp/err" >&2; fail "$overlay: kubectl kustomize"; }
  ok "$overlay: kubectl kustomize renders $(grep -c '^kind:' "$out") objects"

  for version in "${versions[@]}"; do
    if ! "$py" -m kubernetes_validate --strict --quiet -k "$version" "$out" >"$tmp/kv" 2>&1 ||
      grep -qE '^(WARN|ERROR)' "$tmp/kv"; then
      cat "$tmp/kv" >&2
      fail "$overlay: kubernetes-validate --strict -k $version"
    fi
    ok "$overlay: kubernetes-validate --strict -k $version"
  done

  if [ -n "$gateway_bin" ]; then
    "$py" -c '
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc["kind"] == "ConfigMap" and "gateway.toml" in doc.get("data", {}):
        sys.stdout.write(doc["data"]["gateway.toml"])
' "$out" >"$tmp/gateway.toml"
    env -u CARBRIDGE_CONFIG "$gateway_bin" check-config --config "$tmp/gateway.toml" \
      >/dev/null 2>"$tmp/err" || { head -n 20 "$tmp/err" >&2; fail "$overlay: gateway check-config"; }
    ok "$overlay: gateway.toml passes $gateway_bin check-config"
  fi
done
[ -n "$gateway_bin" ] || note "no gateway binary (GATEWAY_BIN, target/*/gateway): gateway.toml not parsed"

# --- The gateway under the profile ---------------------------------------------
# The gateway itself, under the profile as runc would load it: it must
# start, serve /readyz and stop cleanly on SIGTERM; with io_uring_setup
# left out of the profile it must refuse to start and name the profile.
if [ -n "$gateway_bin" ] && python3 -c 'import ctypes.util, sys; sys.exit(not ctypes.util.find_library("seccomp"))'; then
  admin_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  gateway_cmd=$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$gateway_bin" \
    --listen 127.0.0.1:0 --admin-listen "127.0.0.1:$admin_port" --shards 2 --no-downlink \
    --kafka-bootstrap 127.0.0.1:1)
  SECCOMP_EXEC=$gateway_cmd "$py" - "$profile" <"$tmp/seccomp.py" >"$tmp/under-profile.log" 2>&1 &
  under=$!
  ready=""
  for _ in $(seq 200); do
    if curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$under" 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$ready" ] || { cat "$tmp/under-profile.log" >&2; fail "the gateway did not become ready under the seccomp profile"; }
  pkill -TERM -f -- "--admin-listen 127.0.0.1:$admin_port" || true
  wait "$under" || { cat "$tmp/under-profile.log" >&2; fail "the gateway under the seccomp profile did not stop cleanly"; }
  ok "the gateway runs under the seccomp profile: ready, then stopped cleanly on SIGTERM"
  if SECCOMP_DROP=io_uring_setup SECCOMP_EXEC=$gateway_cmd "$py" - "$profile" <"$tmp/seccomp.py" \
    >"$tmp/refused.log" 2>&1; then
    fail "the gateway started under a profile without io_uring_setup"
  fi
  grep -q seccomp "$tmp/refused.log" || { cat "$tmp/refused.log" >&2; fail "the refusal does not name the seccomp profile"; }
  ok "without io_uring_setup in the profile the gateway refuses to start and names the seccomp profile"
else
  note "no gateway binary or no libseccomp: the gateway was not run under the profile"
fi

# --- Policy -------------------------------------------------------------------
"$py" - "$tmp" "${overlays[@]}" <<'PY'
import re, sys, yaml

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

tmp, overlays = sys.argv[1], sys.argv[2:]
DEV_ONLY_UNCONFINED = {"dev"}
GRACE_FLOOR = 120 + 15  # drain.max_secs default + the Kafka flush
# The one container allowed to run as root (it writes the seccomp profile
# into the kubelet's root-owned directory); it must be locked down instead.
ROOT_EXCEPTION = ("DaemonSet", "carbridge-seccomp-installer", "install-seccomp-profile")
KUBELET_SECCOMP = "/var/lib/kubelet/seccomp/"

overlay = "?"
def check(cond, what):
    if not cond:
        print(f"FAIL  {overlay}: {what}", file=sys.stderr)
        sys.exit(1)

def ok(what):
    print(f"ok    {overlay}: {what}")

def pod_spec(obj):
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return obj["spec"]["template"]["spec"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if obj["kind"] == "Pod":
        return obj["spec"]
    return None

def containers(spec):
    return [("init", c) for c in spec.get("initContainers", [])] + \
           [("main", c) for c in spec.get("containers", [])]

def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}

def cpu_cores(quantity):
    q = str(quantity)
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)

for overlay in overlays:
    objs = [o for o in yaml.safe_load_all(open(f"{tmp}/{overlay}.yaml")) if o]
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    workloads = [o for o in objs if pod_spec(o) is not None]

    # Seccomp: Unconfined only in the dev overlay.
    unconfined = []
    for o in workloads:
        spec = pod_spec(o)
        where = f"{o['kind']}/{o['metadata']['name']}"
        if (spec.get("securityContext", {}).get("seccompProfile") or {}).get("type") == "Unconfined":
            unconfined.append(where)
        for _, c in containers(spec):
            if (c.get("securityContext", {}).get("seccompProfile") or {}).get("type") == "Unconfined":
                unconfined.append(f"{where}/{c['name']}")
    for o in objs:
        annotations = dict(o["metadata"].get("annotations") or {})
        if pod_spec(o) is not None and o["kind"] != "CronJob" and o["kind"] != "Pod":
            annotations.update(o["spec"]["template"].get("metadata", {}).get("annotations") or {})
        for key, value in annotations.items():
            if "seccomp" in key and "unconfined" in str(value).lower():
                unconfined.append(f"{o['kind']}/{o['metadata']['name']} annotation {key}")
    if overlay in DEV_ONLY_UNCONFINED:
        ok(f"seccomp Unconfined allowed here (dev only): {', '.join(unconfined) or 'none'}")
    else:
        check(not unconfined, f"seccomp Unconfined outside the dev overlay: {unconfined}")
        ok("no seccomp Unconfined")

    # The gateway StatefulSet.
    sts = by_kind.get("StatefulSet", {}).get("gateway")
    check(sts is not None, "no StatefulSet gateway")
    gspec = pod_spec(sts)
    check(sts["spec"].get("podManagementPolicy") == "Parallel", "gateway podManagementPolicy is not Parallel")
    grace = gspec.get("terminationGracePeriodSeconds", 30)
    toml_text = next((cm["data"]["gateway.toml"] for cm in by_kind.get("ConfigMap", {}).values()
                      if "gateway.toml" in (cm.get("data") or {})), None)
    check(toml_text is not None, "no ConfigMap with gateway.toml")
    if tomllib:
        config = tomllib.loads(toml_text)
        max_secs = config.get("drain", {}).get("max_secs", 120)
        listeners = config.get("listeners", [])
    else:
        found = re.search(r"^max_secs\s*=\s*(\d+)", toml_text, re.M)
        max_secs = int(found.group(1)) if found else 120
        listeners = None
    check(grace > GRACE_FLOOR and grace > max_secs + 15,
          f"gateway terminationGracePeriodSeconds {grace} must exceed drain.max_secs "
          f"({max_secs}) + 15 and {GRACE_FLOOR}")
    ok(f"gateway terminationGracePeriodSeconds {grace} > drain.max_secs {max_secs} + 15")

    headless = by_kind.get("Service", {}).get(sts["spec"]["serviceName"])
    check(headless is not None and headless["spec"].get("clusterIP") == "None",
          f"serviceName {sts['spec']['serviceName']} is not a headless Service here")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    gw_ports = {p["name"] for _, c in containers(gspec) for p in c.get("ports", []) if "name" in p}
    lbs = [s for s in by_kind.get("Service", {}).values() if s["spec"].get("type") == "LoadBalancer"]
    check(len(lbs) == 1, "want exactly one LoadBalancer Service")
    lb = lbs[0]
    check(all(pod_labels.get(k) == v for k, v in lb["spec"]["selector"].items()),
          "the LoadBalancer Service does not select the gateway pods")
    for port in lb["spec"]["ports"]:
        check(str(port["targetPort"]) in gw_ports or isinstance(port["targetPort"], int),
              f"LoadBalancer targetPort {port['targetPort']} is no gateway container port")
    check("admin" not in {str(p["targetPort"]) for p in lb["spec"]["ports"]},
          "the admin port (POST /drain) is on the load balancer")
    ok(f"Services: headless {headless['metadata']['name']}, LoadBalancer "
       f"{lb['metadata']['name']} on {[p['port'] for p in lb['spec']['ports']]}")

    if listeners is not None and overlay not in DEV_ONLY_UNCONFINED:
        plain = [l.get("address") for l in listeners if "tls" not in l]
        check(listeners and not plain, f"plain (non-TLS) MQTT listener outside dev: {plain}")
        ok("every MQTT listener is TLS")

    # Sizing: --slots = replicas x shards per gateway.
    replicas = sts["spec"].get("replicas", 1)
    gw = next(c for c in gspec["containers"] if c["name"] == "gateway")
    genv = env_of(gw)
    check("CARBRIDGE_SHARDS" in genv and "CARBRIDGE_SHARDS_PER_BRIDGE" in genv,
          "gateway must set CARBRIDGE_SHARDS and CARBRIDGE_SHARDS_PER_BRIDGE")
    shards, per_bridge = int(genv["CARBRIDGE_SHARDS"]), int(genv["CARBRIDGE_SHARDS_PER_BRIDGE"])
    check(shards == per_bridge, f"CARBRIDGE_SHARDS {shards} != CARBRIDGE_SHARDS_PER_BRIDGE {per_bridge}")
    job = by_kind.get("Job", {}).get("carbridge-topics")
    check(job is not None, "no Job carbridge-topics")
    tc = pod_spec(job)["containers"][0]
    argv = tc.get("command", []) + tc.get("args", [])
    check("create" in argv, "the topics Job does not run `carbridge-topics create`")
    slots = None
    for i, arg in enumerate(argv):
        if arg.startswith("--slots="):
            slots = int(arg.split("=", 1)[1])
        elif arg == "--slots" and i + 1 < len(argv):
            slots = int(argv[i + 1])
    check(slots == replicas * per_bridge,
          f"topics Job --slots {slots} != gateway replicas {replicas} x shards {per_bridge}")
    ok(f"topics --slots {slots} = {replicas} gateways x {per_bridge} shards")

    # Guaranteed QoS wherever the gateway has a CPU limit (components/cpu-pinning).
    if any("cpu" in c.get("resources", {}).get("limits", {}) for _, c in containers(gspec)):
        for _, c in containers(gspec):
            req, lim = c.get("resources", {}).get("requests", {}), c.get("resources", {}).get("limits", {})
            for res in ("cpu", "memory"):
                check(res in lim and str(req.get(res, lim[res])) == str(lim[res]),
                      f"gateway container {c['name']}: {res} requests != limits (not Guaranteed)")
            check(cpu_cores(lim["cpu"]).is_integer(), f"gateway container {c['name']}: CPU not whole")
        cpus = cpu_cores(gw["resources"]["limits"]["cpu"])
        check(shards == cpus, f"CARBRIDGE_SHARDS {shards} != the gateway's {cpus:g} pinned CPUs")
        ok(f"gateway Guaranteed QoS: {cpus:g} whole CPUs = {shards} shards")

    # The gateway's seccomp profile: set, and installed where it is looked for.
    seccomp = gspec.get("securityContext", {}).get("seccompProfile") or {}
    check(seccomp.get("type") in ("Localhost", "Unconfined", "RuntimeDefault"),
          "gateway pods have no seccompProfile (pick components/seccomp-io-uring)")
    check(seccomp["type"] != "RuntimeDefault", "RuntimeDefault blocks io_uring: the gateway cannot start")
    if seccomp["type"] == "Localhost":
        local = seccomp.get("localhostProfile", "")
        directory, _, filename = local.rpartition("/")
        installers = [o for o in by_kind.get("DaemonSet", {}).values()
                      if any(v.get("hostPath", {}).get("path") == KUBELET_SECCOMP + directory
                             for v in pod_spec(o).get("volumes", []))]
        check(installers, f"no DaemonSet installs {KUBELET_SECCOMP}{local}")
        cms = {v["configMap"]["name"] for v in pod_spec(installers[0]).get("volumes", []) if "configMap" in v}
        check(any(filename in (by_kind["ConfigMap"][n].get("data") or {}) for n in cms),
              f"the installer's ConfigMap holds no {filename}")
        ok(f"gateway seccomp Localhost {local}, installed by DaemonSet "
           f"{installers[0]['metadata']['name']}")
    else:
        ok(f"gateway seccomp {seccomp['type']}")

    # Probes on every gateway and router container.
    router = by_kind.get("Deployment", {}).get("router")
    check(router is not None, "no Deployment router")
    for owner in (sts, router):
        for c in pod_spec(owner)["containers"]:
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                got = (c.get(probe) or {}).get("httpGet", {}).get("path")
                check(got == path, f"{owner['kind']}/{owner['metadata']['name']} container "
                                   f"{c['name']}: {probe} on {got}, want {path}")
    ok("readiness (/readyz) and liveness (/healthz) probes on every gateway and router container")

    # Hardening of every container of every workload.
    for o in workloads:
        spec = pod_spec(o)
        pod_sc = spec.get("securityContext", {})
        for kind, c in containers(spec):
            sc = c.get("securityContext", {})
            where = f"{o['kind']}/{o['metadata']['name']} {kind} container {c['name']}"
            non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            if (o["kind"], o["metadata"]["name"], c["name"]) == ROOT_EXCEPTION:
                mounts = {m["name"] for m in c.get("volumeMounts", [])}
                host = [v for v in spec.get("volumes", []) if "hostPath" in v and v["name"] in mounts]
                check(len(host) == 1 and host[0]["hostPath"]["path"].startswith(KUBELET_SECCOMP),
                      f"{where}: runs as root, so it may mount only the kubelet's seccomp directory")
            else:
                check(non_root is True, f"{where}: runAsNonRoot is not true")
                uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
                check(uid != 0, f"{where}: runAsUser 0")
            check(sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation not false")
            check(sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem not true")
            check("ALL" in (sc.get("capabilities") or {}).get("drop", []), f"{where}: capabilities not drop ALL")
            check(not sc.get("privileged") and not (sc.get("capabilities") or {}).get("add"),
                  f"{where}: privileged or added capabilities")
            check("requests" in c.get("resources", {}), f"{where}: no resource requests")
    ok("runAsNonRoot true everywhere (but the seccomp installer's copy step), no privilege "
       "escalation, read-only root, capabilities drop ALL, resource requests")

    # Disruption budgets for the gateways and the routers.
    pdbs = list(by_kind.get("PodDisruptionBudget", {}).values())
    for owner in (sts, router):
        labels = owner["spec"]["template"]["metadata"]["labels"]
        check(any(all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items())
                  for p in pdbs), f"no PodDisruptionBudget for {owner['kind']}/{owner['metadata']['name']}")
    ok("PodDisruptionBudgets cover the gateway and router pods")
PY

ok "deploy/k8s: all checks passed"
