#!/usr/bin/env python3
"""The live half of the monitoring checks (scripts/monitoring-test.sh):
a Prometheus that scrapes a running stack, asked whether the alerts and
the dashboard find their series.

    monitoring_test.py free-ports N
        N TCP ports free on 127.0.0.1 now, one a line
    monitoring_test.py config OUT --rules FILE --interval SECS
            --gateway ADDR --router ADDR --namespace NS
        prometheus.yml: jobs carbridge-gateway and carbridge-router with
        the target labels the monitoring component's PodMonitors give
        (namespace, pod, container, endpoint; instance = address:port),
        scraped and evaluated every SECS, the rules file loaded
    monitoring_test.py scraped URL N
        exit 0 once each target of jobs carbridge-gateway and
        carbridge-router has been scraped N times (for scripts/lib.sh's
        await: the load starts after Prometheus has seen the counters at
        rest, so that the connects show in rate())
    monitoring_test.py check URL --rules FILE --dashboard FILE
            --interval SECS [--scrapes N] [--wait SECS]
        waits (at most --wait s) for both jobs' targets up with N scrapes
        each and every rule evaluated, then checks, through the HTTP API:
        /api/v1/targets  every target of both jobs up
        /api/v1/rules    every group of the rules file loaded, each rule
                         health ok, no evaluation error
        /api/v1/query    every alert expression and every dashboard
                         expression returns series, every selector in
                         them matches series, and the series carry the
                         labels the alert's annotations ({{ $labels.x }})
                         or the panel's legend ({{x}}) print
        Exit 1 naming each failure (the expression, its metric names, the
        selectors that match nothing and what the metric does have).
        Notes: alerts whose condition holds at the end, alerts that were
        pending or firing at any time of the run (ALERTS), panels with
        nothing but NaN.

What "returns series" means here:
- An alert expression is evaluated with `bool` after each of its
  comparison operators (`> 0` becomes `> bool 0`): it then returns one
  series per alert candidate, 0 while quiet and 1 where the condition
  holds, instead of nothing on a healthy stack. `and` still needs series
  with the same labels on both sides, and arithmetic between two vectors
  still needs them to match, so a label set that never matches is caught.
- `offset D` is removed (from the dashboard's expressions too): the
  series are the same, and a run of a minute has no data D ago
  (CarbridgeConnectionsDropping looks an hour back from 5 minutes ago).
- Dashboard variables: `$namespace` and `$instance` get what their
  variable queries (`label_values(...)`) return from this Prometheus,
  formatted as Grafana formats several selected values ((a|b), regex
  escaped); a variable query that returns nothing fails.
  `$__rate_interval` is 1m: what Grafana computes for a data source
  scraped every 15 s (4 x 15 s), and a window that holds the whole load
  run; `$__interval` 15s, `$__range` 5m.
- Each vector selector of an expression (metric name and label matchers,
  without its range) must match at least one series too, so that a
  misspelt metric or label value under an `or` is not hidden.
- Series whose values are all NaN (a quantile of no observations) count
  as series; they are listed as notes, as are alerts whose condition
  holds on this stack (1 after the `bool` rewrite). On a healthy stack
  none should; a note is a false alarm to look into, not a failure.

Needs PyYAML.
"""

import argparse
import json
import re
import socket
import sys
import time
import urllib.parse
import urllib.request

import yaml

# --- PromQL, as far as this check needs it ------------------------------------

TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<comment>\#[^\n]*)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![\w.]))
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>=,(){}\[\]@])
  | (?P<space>\s+)
    """,
    re.X,
)
COMPARISONS = {"==", "!=", ">=", "<=", ">", "<"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
KEYWORDS = GROUPING | AGGREGATIONS | {"and", "or", "unless", "bool", "offset", "atan2", "Inf", "NaN",
                                      "inf", "nan"}


def tokens(expr: str) -> list[tuple[str, str, int]]:
    """(kind, text, position) for each token; spaces and comments dropped."""
    out, pos = [], 0
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot read PromQL at {expr[pos:pos + 20]!r}")
        if m.lastgroup not in ("space", "comment"):
            out.append((m.lastgroup, m.group(), pos))
        pos = m.end()
    return out


def outside_braces(toks):
    """Yields (index, token) for the tokens outside label matchers {...}."""
    depth = 0
    for i, tok in enumerate(toks):
        if tok[1] == "{":
            depth += 1
        elif tok[1] == "}":
            depth -= 1
        elif depth == 0:
            yield i, tok


def rewrite(expr: str, comparisons_bool: bool) -> str:
    """The expression without `offset`, and with `bool` after each
    comparison if asked (the alerts)."""
    toks = tokens(expr)
    inserts, cuts = [], []
    for i, (kind, text, pos) in outside_braces(toks):
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if comparisons_bool and kind == "op" and text in COMPARISONS and not (nxt and nxt[1] == "bool"):
            inserts.append(pos + len(text))
        elif kind == "ident" and text == "offset" and nxt:
            # offset [-]DURATION
            last = toks[i + 2] if nxt[1] == "-" else nxt
            cuts.append((pos, last[2] + len(last[1])))
    edits = [(p, p, " bool") for p in inserts] + [(a, b, "") for a, b in cuts]
    for start, end, text in sorted(edits, reverse=True):
        expr = expr[:start] + text + expr[end:]
    return expr


def selectors(expr: str) -> list[str]:
    """The vector selectors (name and matchers, no range) an expression reads."""
    toks = tokens(expr)
    found, i = [], 0
    while i < len(toks):
        kind, text, pos = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if text in GROUPING and nxt and nxt[1] == "(":
            # by (a, b): label names, not metrics
            i = next(j for j in range(i, len(toks)) if toks[j][1] == ")") + 1
            continue
        if text == "{":
            # A selector without a name ({__name__="x"}) or a name's matchers.
            j = next(j for j in range(i, len(toks)) if toks[j][1] == "}")
            name = toks[i - 1][1] if i and toks[i - 1][0] == "ident" and toks[i - 1][1] not in KEYWORDS else ""
            found.append(name + expr[pos:toks[j][2] + 1])
            i = j + 1
            continue
        if kind == "ident" and text not in KEYWORDS and not (nxt and nxt[1] in ("(", "{")):
            found.append(text)
        i += 1
    return found


def metric_names(expr: str) -> list[str]:
    return sorted({re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", s).group() for s in selectors(expr)
                   if not s.startswith("{")})


# {{ $labels.instance }} in an alert's annotations; {{instance}} in a legend.
ALERT_LABEL = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")
LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


# --- Prometheus' HTTP API -------------------------------------------------------

class Prometheus:
    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def get(self, path: str, **params):
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"{path}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str, at: float):
        """The result as a list of (labels, value) pairs (one for a scalar)."""
        data = self.get("/api/v1/query", query=expr, time=f"{at:.3f}")
        if data["resultType"] == "vector":
            return [(s["metric"], s["value"][1]) for s in data["result"]]
        if data["resultType"] == "scalar":
            return [({}, data["result"][1])]
        raise RuntimeError(f"{expr}: a {data['resultType']} result")


# --- Commands -------------------------------------------------------------------

def free_ports(n):
    sockets = []
    for _ in range(int(n)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    for s in sockets:
        print(s.getsockname()[1])
        s.close()


def config(argv):
    p = argparse.ArgumentParser(prog="monitoring_test.py config")
    p.add_argument("out")
    p.add_argument("--rules", required=True)
    p.add_argument("--interval", type=int, required=True)
    p.add_argument("--gateway", required=True)
    p.add_argument("--router", required=True)
    p.add_argument("--namespace", required=True)
    a = p.parse_args(argv)

    def job(name, component, address):
        # What a PodMonitor's target carries: job from jobLabel, instance
        # = pod IP:port, and namespace, pod, container, endpoint.
        return {
            "job_name": name,
            "metrics_path": "/metrics",
            "static_configs": [{
                "targets": [address],
                "labels": {"namespace": a.namespace, "pod": f"{component}-0",
                           "container": component, "endpoint": "admin"},
            }],
        }

    interval = f"{a.interval}s"
    doc = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval,
                   "evaluation_interval": interval},
        "rule_files": [a.rules],
        "scrape_configs": [job("carbridge-gateway", "gateway", a.gateway),
                           job("carbridge-router", "router", a.router)],
    }
    with open(a.out, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)


class Report:
    def __init__(self):
        self.failures = 0

    def ok(self, text):
        print(f"ok    {text}")

    def note(self, text):
        print(f"note  {text}")

    def fail(self, text):
        self.failures += 1
        print(f"FAIL  {text}", file=sys.stderr)


JOBS = ["carbridge-gateway", "carbridge-router"]


def scrapes_per_job(prom):
    """The fewest scrapes of any target of each job in the last 5 minutes."""
    per_job = {}
    for labels, value in prom.query("count_over_time(up[5m])", time.time()):
        job = labels.get("job")
        per_job[job] = min(per_job.get(job, float("inf")), float(value))
    return per_job


def scraped(url, n):
    try:
        per_job = scrapes_per_job(Prometheus(url))
    except (OSError, RuntimeError):
        return 1
    return 0 if all(per_job.get(job, 0) >= int(n) for job in JOBS) else 1


def wait_ready(prom, jobs, scrapes, rule_count, deadline):
    """Targets of every job with enough scrapes and every rule evaluated."""
    last = "Prometheus to answer"
    while time.time() < deadline:
        try:
            per_job = scrapes_per_job(prom)
            rules = [r for g in prom.get("/api/v1/rules")["groups"] for r in g["rules"]]
            unevaluated = [r["name"] for r in rules if r.get("health") == "unknown"]
            missing = [j for j in jobs if per_job.get(j, 0) < scrapes]
            if not missing and len(rules) >= rule_count and not unevaluated:
                return None
            last = (f"{scrapes} scrapes of {', '.join(missing)}" if missing
                    else f"every rule evaluated ({len(rules)} loaded, {len(unevaluated)} not yet)")
        except (OSError, RuntimeError) as e:
            last = f"Prometheus to answer ({e})"
        time.sleep(0.5)
    return last


def describe_empty(prom, selector, at):
    """Why a selector matches nothing: no such metric, or which values it has."""
    name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", selector)
    if not name:
        return "matches no series"
    name = name.group()
    series = prom.query(name, at)
    if not series:
        return "no target exports this metric"
    wanted = {m[0] for m in MATCHER.findall(selector)}
    have = []
    for label in sorted(wanted):
        values = sorted({s[0].get(label, "") for s in series})
        have.append(f"{label} in {{{', '.join(repr(v) for v in values)}}}")
    return f"no series match; the metric's {len(series)} series have " + "; ".join(have)


def grafana_regex(values):
    escaped = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def dashboard_variables(prom, dashboard, report, at):
    """Each variable's value as Grafana would substitute it with every value selected."""
    values = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var.get("query"), dict) else var.get("query", "")
        for name, value in values.items():
            query = query.replace(name, value)
        m = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", query)
        if not m:
            report.fail(f"dashboard variable ${var['name']}: a query this check cannot run: {query}")
            continue
        selector, label = m.groups()
        found = sorted(prom.get(f"/api/v1/label/{label}/values", **{"match[]": selector},
                                start=f"{at - 300:.3f}", end=f"{at:.3f}"))
        if not found:
            report.fail(f"dashboard variable ${var['name']}: {query} returns nothing")
            continue
        values[f"${var['name']}"] = grafana_regex(found)
        values[f"${{{var['name']}}}"] = values[f"${var['name']}"]
        report.ok(f"dashboard variable ${var['name']}: {query} -> {', '.join(found)}")
    return values


def panels(dashboard):
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def check_expression(prom, what, expr, at, report, alert=False, labels=(), used_by=""):
    """Series, every selector matching, and the labels a legend or an
    annotation names (`labels`, named by `used_by`) on every series."""
    try:
        result = prom.query(expr, at)
    except (OSError, RuntimeError) as e:
        report.fail(f"{what}: Prometheus refuses it: {e}\n      {expr}")
        return
    empty = []
    for selector in dict.fromkeys(selectors(expr)):
        if not prom.query(selector, at):
            empty.append(f"{selector}: {describe_empty(prom, selector, at)}")
    names = ", ".join(metric_names(expr)) or "(no metric)"
    if not result:
        report.fail(f"{what}: returns no series (metrics: {names})\n      {expr}"
                    + "".join(f"\n      {e}" for e in empty))
        return
    if empty:
        report.fail(f"{what}: {len(result)} series, but selectors match nothing (metrics: {names})"
                    + "".join(f"\n      {e}" for e in empty))
        return
    lacking = sorted({label for series, _ in result for label in labels if label not in series})
    if lacking:
        report.fail(f"{what}: {used_by} uses {', '.join(lacking)}, which its series do not carry "
                    f"(they have {', '.join(sorted(set(result[0][0]) - {'__name__'}))})\n      {expr}")
        return
    values = [float(v) for _, v in result]
    detail = f"{len(result)} series"
    if alert:
        holding = [labels for (labels, _), v in zip(result, values) if v == 1]
        detail += f", condition holds for {len(holding)}" if holding else ", quiet"
        if holding:
            report.note(f"{what}: the condition holds on this stack for "
                        + "; ".join(", ".join(f"{k}={v}" for k, v in sorted(h.items()) if k != "__name__")
                                    for h in holding))
    elif all(v != v for v in values):
        report.note(f"{what}: NaN only (nothing observed in the window)")
    else:
        detail += f", largest {max(v for v in values if v == v):.3g}"
    report.ok(f"{what}: {detail}")


def check(argv):
    p = argparse.ArgumentParser(prog="monitoring_test.py check")
    p.add_argument("url")
    p.add_argument("--rules", required=True)
    p.add_argument("--dashboard", required=True)
    p.add_argument("--interval", type=int, required=True)
    p.add_argument("--scrapes", type=int, default=5)
    p.add_argument("--wait", type=float, default=60)
    a = p.parse_args(argv)
    prom = Prometheus(a.url)
    report = Report()
    rules_doc = yaml.safe_load(open(a.rules))
    dashboard = json.load(open(a.dashboard))
    jobs = JOBS
    rule_count = sum(len(g["rules"]) for g in rules_doc["groups"])

    waited = time.time()
    pending = wait_ready(prom, jobs, a.scrapes, rule_count, time.time() + a.wait)
    if pending:
        report.fail(f"timed out after {a.wait:.0f} s waiting for {pending}")
        return 1
    report.ok(f"{a.scrapes} scrapes of each target, every rule evaluated "
              f"(waited {time.time() - waited:.1f} s)")

    # Targets.
    targets = prom.get("/api/v1/targets", state="active")["activeTargets"]
    for job in jobs:
        mine = [t for t in targets if t["labels"].get("job") == job]
        if not mine:
            report.fail(f"target: no target of job {job}")
        for t in mine:
            labels = t["labels"]
            if t["health"] != "up":
                report.fail(f"target {job} {labels.get('instance')}: {t['health']} {t.get('lastError', '')}")
            else:
                report.ok(f"target {job} {labels.get('instance')} (pod {labels.get('pod')}, "
                          f"namespace {labels.get('namespace')}): up")

    # Rule groups.
    groups = {g["name"]: g for g in prom.get("/api/v1/rules")["groups"]}
    for want in rules_doc["groups"]:
        got = groups.get(want["name"])
        if not got:
            report.fail(f"rule group {want['name']}: not loaded")
            continue
        names = [r["alert"] if "alert" in r else r["record"] for r in want["rules"]]
        loaded = {r["name"]: r for r in got["rules"]}
        bad = []
        for name in names:
            r = loaded.get(name)
            if not r:
                bad.append(f"{name} not loaded")
            elif r["health"] != "ok" or r.get("lastError"):
                bad.append(f"{name}: health {r['health']} {r.get('lastError', '')}")
        for b in bad:
            report.fail(f"rule group {want['name']}: {b}")
        if not bad:
            report.ok(f"rule group {want['name']}: {len(names)} rules, health ok, no errors")

    at = time.time()
    # Alerts.
    for group in rules_doc["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            templates = " ".join(str(v) for v in {**rule.get("labels", {}),
                                                   **rule.get("annotations", {})}.values())
            check_expression(prom, f"alert {name}", rewrite(rule["expr"], True), at, report,
                             alert="alert" in rule, labels=set(ALERT_LABEL.findall(templates)),
                             used_by="an annotation")

    # Dashboard.
    values = dashboard_variables(prom, dashboard, report, at)
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if not expr:
                continue
            filled = expr
            for name in sorted(values, key=len, reverse=True):
                filled = filled.replace(name, values[name])
            what = f"panel {panel.get('title', '?')!r} {target.get('refId', '')}".rstrip()
            if "$" in filled:
                report.fail(f"{what}: a variable this check does not know: {expr}")
                continue
            check_expression(prom, what, rewrite(filled, False), at, report,
                             labels=set(LEGEND_LABEL.findall(target.get("legendFormat", ""))),
                             used_by="the legend")

    # An alert pending or firing at any point of a healthy run is worth a
    # look (Prometheus keeps them as ALERTS series).
    history = prom.query("count by (alertname, alertstate) (count_over_time(ALERTS[10m]))", at)
    for labels, evaluations in history:
        report.note(f"alert {labels.get('alertname')} was {labels.get('alertstate')} during the run "
                    f"({evaluations} evaluations)")
    if not history:
        report.ok("no alert was pending or firing during the run")

    if report.failures:
        print(f"FAIL  monitoring: {report.failures} failure(s)", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("free-ports", "config", "scraped", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    command, argv = sys.argv[1], sys.argv[2:]
    if command == "free-ports":
        free_ports(*argv)
        return 0
    if command == "scraped":
        return scraped(*argv)
    if command == "config":
        config(argv)
        return 0
    return check(argv)


if __name__ == "__main__":
    sys.exit(main())
