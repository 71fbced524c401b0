// Offline validation of the custom resources in a rendered overlay, for
// scripts/check-k8s.sh; the built-in objects go on to kubernetes-validate.
//
//   node crds.mjs RENDERED.yaml BUILTIN_OUT.yaml
//
// Custom resources of the operators the components use are checked against
// their CRDs' schemas as the @kubernetes-models packages carry them
// (types, required fields, patterns and enums; not unknown fields, which
// those schemas allow):
//   monitoring.coreos.com/v1            PodMonitor, PrometheusRule
//   cert-manager.io/v1                  Certificate
// The Security Profiles Operator has no such package: SeccompProfile
// (security-profiles-operator.x-k8s.io/v1beta1) is checked here against
// the fields and enums of its API type, unknown fields included.
// Any other custom resource fails: nothing would check it.
//
// check-k8s.sh installs the packages (pinned) next to a copy of this file.
import fs from "node:fs";
import yaml from "js-yaml";
import { PodMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor";
import { PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule";
import { Certificate } from "@kubernetes-models/cert-manager/cert-manager.io/v1/Certificate";

const [rendered, builtinOut] = process.argv.slice(2);
const docs = yaml.loadAll(fs.readFileSync(rendered, "utf8")).filter(Boolean);

const models = {
  "monitoring.coreos.com/v1/PodMonitor": PodMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
  "cert-manager.io/v1/Certificate": Certificate,
};

// From the SeccompProfile API type (v1beta1) of the Security Profiles
// Operator: its fields and the kubebuilder enums on them.
const ACTIONS = [
  "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
  "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY",
];
const ARCHES = [
  "SCMP_ARCH_NATIVE", "SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM",
  "SCMP_ARCH_AARCH64", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32",
  "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC",
  "SCMP_ARCH_PPC64", "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390", "SCMP_ARCH_S390X",
  "SCMP_ARCH_PARISC", "SCMP_ARCH_PARISC64", "SCMP_ARCH_RISCV64",
];
const OPS = [
  "SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
  "SCMP_CMP_MASKED_EQ",
];
const FLAGS = [
  "SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
  "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
];

function seccompProfileErrors(obj) {
  const errors = [];
  const only = (value, allowed, where) => {
    for (const key of Object.keys(value ?? {})) {
      if (!allowed.includes(key)) errors.push(`${where}.${key}: unknown field`);
    }
  };
  const oneOf = (value, allowed, where) => {
    if (!allowed.includes(value)) errors.push(`${where}: ${JSON.stringify(value)} is not one of the allowed values`);
  };
  const uint = (value, where) => {
    if (!Number.isInteger(value) || value < 0) errors.push(`${where}: not an unsigned integer`);
  };
  only(obj, ["apiVersion", "kind", "metadata", "spec"], "");
  if (!obj.metadata?.name) errors.push("metadata.name: required");
  if (!obj.metadata?.namespace) errors.push("metadata.namespace: required (SeccompProfile is namespaced)");
  const spec = obj.spec ?? {};
  only(spec, ["baseProfileName", "defaultAction", "architectures", "listenerPath",
    "listenerMetadata", "syscalls", "flags"], "spec");
  oneOf(spec.defaultAction, ACTIONS, "spec.defaultAction");
  (spec.architectures ?? []).forEach((a, i) => oneOf(a, ARCHES, `spec.architectures[${i}]`));
  (spec.flags ?? []).forEach((f, i) => oneOf(f, FLAGS, `spec.flags[${i}]`));
  (spec.syscalls ?? []).forEach((rule, i) => {
    const where = `spec.syscalls[${i}]`;
    only(rule, ["names", "action", "errnoRet", "args"], where);
    if (!Array.isArray(rule.names) || rule.names.length === 0 ||
        !rule.names.every((n) => typeof n === "string")) {
      errors.push(`${where}.names: required, a list of names`);
    }
    oneOf(rule.action, ACTIONS, `${where}.action`);
    if ("errnoRet" in rule) uint(rule.errnoRet, `${where}.errnoRet`);
    if ((rule.args ?? []).length > 6) errors.push(`${where}.args: at most 6`);
    (rule.args ?? []).forEach((arg, j) => {
      only(arg, ["index", "value", "valueTwo", "op"], `${where}.args[${j}]`);
      uint(arg.index, `${where}.args[${j}].index`);
      if ("value" in arg) uint(arg.value, `${where}.args[${j}].value`);
      if ("valueTwo" in arg) uint(arg.valueTwo, `${where}.args[${j}].valueTwo`);
      oneOf(arg.op, OPS, `${where}.args[${j}].op`);
    });
  });
  return errors;
}

// Kubernetes' own API groups with a dot in their name (the others, such as
// apps or batch, have none); kubernetes-validate knows their schemas.
const BUILTIN_GROUPS = new Set([
  "admissionregistration.k8s.io", "apiextensions.k8s.io", "apiregistration.k8s.io",
  "certificates.k8s.io", "coordination.k8s.io", "discovery.k8s.io", "events.k8s.io",
  "flowcontrol.apiserver.k8s.io", "networking.k8s.io", "node.k8s.io",
  "rbac.authorization.k8s.io", "resource.k8s.io", "scheduling.k8s.io", "storage.k8s.io",
]);

const builtin = [];
const checked = {};
let failed = false;
for (const doc of docs) {
  const { apiVersion = "", kind = "" } = doc;
  const name = `${kind}/${doc.metadata?.name}`;
  const group = apiVersion.includes("/") ? apiVersion.split("/")[0] : "";
  if (!group.includes(".") || BUILTIN_GROUPS.has(group)) {
    builtin.push(doc); // core, apps, batch, policy, networking.k8s.io, ...
    continue;
  }
  let errors;
  const model = models[`${apiVersion}/${kind}`];
  if (model) {
    try {
      new model(doc).validate();
      errors = [];
    } catch (error) {
      errors = [error.message];
    }
  } else if (apiVersion === "security-profiles-operator.x-k8s.io/v1beta1" && kind === "SeccompProfile") {
    errors = seccompProfileErrors(doc);
  } else {
    errors = [`no schema for ${apiVersion} ${kind} here: add one to deploy/checks/crds.mjs`];
  }
  if (errors.length) {
    failed = true;
    for (const error of errors) console.error(`FAIL  ${name}: ${error}`);
  } else {
    checked[kind] = (checked[kind] ?? 0) + 1;
  }
}
fs.writeFileSync(builtinOut, builtin.map((d) => yaml.dump(d, { lineWidth: -1 })).join("---\n"));
if (failed) process.exit(1);
const summary = Object.entries(checked).map(([k, n]) => `${n} ${k}`).join(", ");
console.log(summary ? `custom resources valid: ${summary}` : "no custom resources");
