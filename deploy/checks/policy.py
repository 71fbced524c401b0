"""Policy checks on rendered overlays, for scripts/check-k8s.sh.

    python3 deploy/checks/policy.py TMP OVERLAY...

TMP/OVERLAY.yaml is each overlay as `kubectl kustomize` rendered it. The
rules are the ones deploy/k8s/README.md ("Checking") lists; one line per
check, exit 1 at the first failure. EXPECT_TRUSTED_NETWORKS (a JSON list)
is what a listener's PROXY trusted_networks must be in overlays that have
one (check-k8s.sh renders them with test values).
"""

import ipaddress
import json
import os
import re
import sys

import yaml

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
        linger_secs = config.get("drain", {}).get("linger_secs", 5)
        listeners = config.get("listeners", [])
    else:
        found = re.search(r"^max_secs\s*=\s*(\d+)", toml_text, re.M)
        max_secs = int(found.group(1)) if found else 120
        found = re.search(r"^linger_secs\s*=\s*(\d+)", toml_text, re.M)
        linger_secs = int(found.group(1)) if found else 5
        listeners = None
    drain = max_secs + linger_secs
    check(grace > GRACE_FLOOR and grace > drain + 15,
          f"gateway terminationGracePeriodSeconds {grace} must exceed drain.max_secs "
          f"({max_secs}) + drain.linger_secs ({linger_secs}) + 15 and {GRACE_FLOOR}")
    ok(f"gateway terminationGracePeriodSeconds {grace} > drain.max_secs {max_secs} "
       f"+ linger_secs {linger_secs} + 15")

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
    gw_namespace = sts["metadata"].get("namespace")
    gw_nodes = gspec.get("nodeSelector") or {}
    if seccomp["type"] == "Localhost":
        local = seccomp.get("localhostProfile", "")
        directory, _, filename = local.rpartition("/")
        if directory.startswith("operator/"):
            # The Security Profiles Operator writes SeccompProfile <ns>/<name>
            # to operator/<ns>/<name>.json.
            _, ns, _ = local.split("/", 2)
            profiles = [o for o in objs if o["kind"] == "SeccompProfile"
                        and o["metadata"].get("namespace") == ns
                        and o["metadata"]["name"] + ".json" == filename]
            check(profiles, f"no SeccompProfile {ns}/{filename[:-5]} for localhostProfile {local}")
            check(ns != gw_namespace, f"the SeccompProfile is in the gateway's namespace {ns}")
            ok(f"gateway seccomp Localhost {local}, from SeccompProfile {ns}/{filename[:-5]} "
               "(Security Profiles Operator)")
        else:
            installers = [o for o in by_kind.get("DaemonSet", {}).values()
                          if any(v.get("hostPath", {}).get("path") == KUBELET_SECCOMP + directory
                                 for v in pod_spec(o).get("volumes", []))]
            check(installers, f"no DaemonSet installs {KUBELET_SECCOMP}{local}")
            installer = installers[0]
            ispec = pod_spec(installer)
            cms = {v["configMap"]["name"] for v in ispec.get("volumes", []) if "configMap" in v}
            check(any(filename in (by_kind["ConfigMap"][n].get("data") or {}) for n in cms),
                  f"the installer's ConfigMap holds no {filename}")
            ins_ns = installer["metadata"].get("namespace")
            check(ins_ns and ins_ns != gw_namespace,
                  f"the seccomp installer (root, hostPath) runs in the gateway's namespace {gw_namespace}")
            ns_obj = next((o for o in objs if o["kind"] == "Namespace" and o["metadata"]["name"] == ins_ns), None)
            check(ns_obj is not None, f"the installer's namespace {ins_ns} is not in the overlay")
            ins_nodes = ispec.get("nodeSelector") or {}
            check(ins_nodes.get("kubernetes.io/os") == "linux" and "kubernetes.io/arch" in ins_nodes,
                  "the seccomp installer has no kubernetes.io/os: linux and kubernetes.io/arch node selector")
            check(all(gw_nodes.get(k) == v for k, v in ins_nodes.items()),
                  f"gateway pods may land on nodes the installer skips: gateway nodeSelector {gw_nodes}, "
                  f"installer's {ins_nodes}")
            ok(f"gateway seccomp Localhost {local}, installed by DaemonSet {ins_ns}/"
               f"{installer['metadata']['name']} on the gateway's nodes {ins_nodes}")
    else:
        ok(f"gateway seccomp {seccomp['type']}")

    # Pod Security: outside dev, the gateway's namespace enforces restricted.
    if overlay not in DEV_ONLY_UNCONFINED:
        ns_obj = next((o for o in objs if o["kind"] == "Namespace" and o["metadata"]["name"] == gw_namespace), None)
        check(ns_obj is not None, f"the gateway's namespace {gw_namespace} is not in the overlay")
        enforce = (ns_obj["metadata"].get("labels") or {}).get("pod-security.kubernetes.io/enforce")
        check(enforce == "restricted",
              f"namespace {gw_namespace}: pod-security.kubernetes.io/enforce is {enforce}, want restricted")
        ok(f"namespace {gw_namespace} enforces the restricted Pod Security Standard")

    # TLS files: each path in gateway.toml is a key of the mounted Secrets.
    if listeners:
        mounts = {m["mountPath"].rstrip("/"): m["name"] for m in gw.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in gspec.get("volumes", [])}
        def provided(volume):
            if "secret" in volume:
                items = volume["secret"].get("items")
                return {i["path"] for i in items} if items else None
            if "projected" in volume:
                paths = set()
                for source in volume["projected"]["sources"]:
                    items = (source.get("secret") or source.get("configMap") or {}).get("items")
                    if items is None:
                        return None
                    paths |= {i["path"] for i in items}
                return paths
            return None
        files = []
        for l in listeners:
            tls = l.get("tls") or {}
            files += [tls[k] for k in ("cert", "key", "client_ca", "ticket_keys") if k in tls]
            files += tls.get("crls", [])
        for f in files:
            directory, _, name = f.rpartition("/")
            check(directory in mounts, f"{f}: no volume mounted at {directory}")
            paths = provided(volumes[mounts[directory]])
            check(paths is None or name in paths, f"{f}: the volume at {directory} holds {sorted(paths or [])}")
        if files:
            ok(f"every TLS file gateway.toml names is a key of the mounted Secrets ({len(files)} files)")
        secrets = {s["secret"]["name"] for v in volumes.values()
                   for s in v.get("projected", {}).get("sources", []) if "secret" in s}
        secrets |= {v["secret"]["secretName"] for v in volumes.values() if "secret" in v}
        for cert in [o for o in objs if o["kind"] == "Certificate"]:
            check(cert["spec"]["secretName"] in secrets,
                  f"Certificate {cert['metadata']['name']} writes {cert['spec']['secretName']}, "
                  f"which the gateway does not mount ({sorted(secrets)})")
            ok(f"Certificate {cert['metadata']['name']} writes the Secret the gateway mounts")

        # PROXY listeners: networks given, none that trusts everyone.
        expected = os.environ.get("EXPECT_TRUSTED_NETWORKS")
        for l in listeners:
            proxy = l.get("proxy")
            if proxy is None:
                continue
            nets = proxy.get("trusted_networks", [])
            check(nets, f"listener {l.get('address')}: trusted_networks is empty")
            check(all(ipaddress.ip_network(n).prefixlen > 0 for n in nets),
                  f"listener {l.get('address')}: trusted_networks {nets} trusts every address")
            if expected:
                check(nets == json.loads(expected),
                      f"listener {l.get('address')}: trusted_networks {nets}, the overlay was given {expected}")
            ok(f"listener {l.get('address')}: PROXY headers trusted from {nets} only, as the overlay said")

    # The admin ports: closed to all but Prometheus outside dev.
    policies = list(by_kind.get("NetworkPolicy", {}).values())
    if overlay not in DEV_ONLY_UNCONFINED:
        for owner in (sts, by_kind.get("Deployment", {}).get("router")):
            labels = owner["spec"]["template"]["metadata"]["labels"]
            ports = {p["name"] for c in pod_spec(owner)["containers"] for p in c.get("ports", [])}
            mine = [p for p in policies
                    if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                    and all(labels.get(k) == v for k, v in p["spec"]["podSelector"].get("matchLabels", {}).items())]
            where = f"{owner['kind']}/{owner['metadata']['name']}"
            check(mine, f"no NetworkPolicy selects the {where} pods: their admin port is open to every pod")
            for p in mine:
                for rule in p["spec"].get("ingress", []):
                    rule_ports = {str(x.get("port")) for x in rule.get("ports", [])}
                    opens_admin = not rule.get("ports") or "admin" in rule_ports
                    if opens_admin:
                        check(rule.get("from"), f"NetworkPolicy {p['metadata']['name']}: the admin port from anywhere")
                        for peer in rule["from"]:
                            check("namespaceSelector" in peer and "podSelector" in peer and "ipBlock" not in peer,
                                  f"NetworkPolicy {p['metadata']['name']}: admin port peer {peer} is not "
                                  "one namespace's pods")
            if "mqtt" in ports or "mqtts" in ports:
                check(any(not r.get("from") and ({"mqtt", "mqtts"} & ports) <=
                          {str(x.get("port")) for x in r.get("ports", [])}
                          for p in mine for r in p["spec"].get("ingress", [])),
                      f"the {where} pods' MQTT port is not open to everyone")
            ok(f"NetworkPolicy: {where} admin port admits chosen pods only"
               + (", MQTT open to all" if {"mqtt", "mqtts"} & ports else ""))

    # An AWS load balancer: the readiness gate, and health checks that
    # survive the PROXY header.
    annotations = lb["metadata"].get("annotations") or {}
    if annotations.get("service.beta.kubernetes.io/aws-load-balancer-type") == "external":
        ns_obj = next(o for o in objs if o["kind"] == "Namespace" and o["metadata"]["name"] == gw_namespace)
        check((ns_obj["metadata"].get("labels") or {}).get("elbv2.k8s.aws/pod-readiness-gate-inject") == "enabled",
              f"namespace {gw_namespace} lacks elbv2.k8s.aws/pod-readiness-gate-inject: enabled")
        if annotations.get("service.beta.kubernetes.io/aws-load-balancer-proxy-protocol"):
            check(annotations.get("service.beta.kubernetes.io/aws-load-balancer-healthcheck-protocol") == "TCP"
                  and annotations.get("service.beta.kubernetes.io/aws-load-balancer-healthcheck-port",
                                      "traffic-port") == "traffic-port",
                  "PROXY protocol on, but the health check is not TCP on the traffic port "
                  "(it sends a PROXY header the admin port does not read)")
        ok(f"AWS load balancer: readiness gate on namespace {gw_namespace}, TCP health checks on the MQTT port")

    # Probes on every gateway and router container.
    router = by_kind.get("Deployment", {}).get("router")
    check(router is not None, "no Deployment router")
    for owner in (sts, router):
        for c in pod_spec(owner)["containers"]:
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
                got = (c.get(probe) or {}).get("httpGet", {}).get("path")
                check(got == path, f"{owner['kind']}/{owner['metadata']['name']} container "
                                   f"{c['name']}: {probe} on {got}, want {path}")
    ok("readiness (/readyz) and liveness (/livez) probes on every gateway and router container")

    # The admin token comes from a Secret, never a literal in the manifests.
    for owner in (sts, router):
        for c in pod_spec(owner)["containers"]:
            for env in c.get("env", []):
                if env["name"] == "CARBRIDGE_ADMIN_TOKEN":
                    check("secretKeyRef" in (env.get("valueFrom") or {}),
                          f"{owner['kind']}/{owner['metadata']['name']}: CARBRIDGE_ADMIN_TOKEN "
                          "is not from a Secret")
    ok("the admin token, where set, from a Secret")

    # Kafka secrets (passwords, key passphrases, SASL credentials) only
    # from files or variables a Secret fills: never a literal in a
    # ConfigMap, an -X flag or an environment variable's value.
    secret_key = re.compile(r"(password|secret|sasl\.username|sasl\.oauthbearer)", re.I)
    for name, cm in by_kind["ConfigMap"].items():
        for key, text in (cm.get("data") or {}).items():
            for line in str(text).splitlines():
                prop = line.split("=", 1)[0].strip().strip('"')
                check(not ("=" in line and secret_key.search(prop) and not line.lstrip().startswith("#")),
                      f"ConfigMap {name} {key}: a Kafka secret as a literal ({prop})")
    workloads = [o for kind in ("StatefulSet", "Deployment", "Job") for o in by_kind[kind].values()]
    for owner in workloads:
        for c in pod_spec(owner)["containers"]:
            argv = (c.get("command") or []) + (c.get("args") or [])
            for flag, value in zip(argv, argv[1:]):
                if flag in ("-X", "--kafka-property"):
                    check(not secret_key.search(value.split("=", 1)[0]),
                          f"{owner['kind']}/{owner['metadata']['name']}: a Kafka secret as -X {value.split('=', 1)[0]}")
                if flag == "--kafka-property-file":
                    path = value.split("=", 1)[-1]
                    mounts = [m for m in c.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")]
                    volumes = {v["name"]: v for v in pod_spec(owner).get("volumes", [])}
                    check(mounts and any("secret" in volumes.get(m["name"], {}) or "projected" in volumes.get(m["name"], {})
                                         for m in mounts),
                          f"{owner['kind']}/{owner['metadata']['name']}: --kafka-property-file {value} is not on a Secret volume")
            for env in c.get("env", []):
                if secret_key.search(env["name"]) and "value" in env:
                    check(False, f"{owner['kind']}/{owner['metadata']['name']}: {env['name']} as a literal")
    ok("Kafka secrets only from Secret volumes (--kafka-property-file), never literals")

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
