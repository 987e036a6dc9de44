#!/usr/bin/env bash
# Renders every kustomization under deploy/ with `kubectl kustomize` and validates the
# output offline, strictly (unknown fields are errors), against the Kubernetes API
# schemas of the oldest and newest versions it is meant for:
#   deploy/kubernetes (with the DeviceClass, resource.k8s.io/v1)  1.34 and 1.36
#   deploy/kubernetes/device-plugin-only and its base             1.30 and 1.36
# Then checks that the two installs differ by exactly one object, the DeviceClass
# `gpuslice.io` that selects the driver's devices. Components (kind: Component, e.g.
# deploy/kubernetes/components/monitoring) are not built alone: an overlay of the full
# install with the monitoring component is built as docs/metrics.md tells users to, its
# Kubernetes objects validated as above; its PodMonitor (the Prometheus operator's CRD,
# which has no schema there) is checked against the DaemonSet it must scrape.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${KV_VENV:-target/kubernetes-validate-venv}"
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==1.37.0"
fi
rendered="$(mktemp -d)"
trap 'rm -rf "$rendered"' EXIT

# The Kubernetes versions (oldest, newest) each kustomization is validated against.
versions_for() {
    case "$1" in
        deploy/kubernetes) echo "1.34.0 1.36.0" ;;
        deploy/kubernetes/base | deploy/kubernetes/device-plugin-only) echo "1.30.0 1.36.0" ;;
        *) return 1 ;;
    esac
}

count=0
while IFS= read -r dir; do
    if grep -q '^kind: Component' "$dir/kustomization.yaml"; then
        continue
    fi
    versions="$(versions_for "$dir")" || {
        echo "$dir: no Kubernetes versions to validate it against; add it to versions_for in $0"
        exit 1
    }
    out="$rendered/$(echo "$dir" | tr / _).yaml"
    kubectl kustomize "$dir" > "$out"
    for version in $versions; do
        # A kind with no schema for that version is only a warning to the tool (exit 0):
        # here it fails, so a DeviceClass can't pass for a cluster without resource.k8s.io/v1.
        report="$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "$out" 2>&1)" || {
            echo "$report"
            exit 1
        }
        if [ -n "$report" ]; then
            echo "$dir, Kubernetes $version:"
            echo "$report"
            exit 1
        fi
    done
    echo "$dir: $(grep -c '^kind:' "$out") objects, valid for Kubernetes ${versions// / and }"
    count=$((count + 1))
done < <(find deploy -name kustomization.yaml -printf '%h\n' | sort)
[ "$count" -gt 0 ] || { echo "no kustomization under deploy/"; exit 1; }

# The full install is the device-plugin-only one plus the DeviceClass, nothing else.
"$VENV/bin/python" - "$rendered/deploy_kubernetes.yaml" \
    "$rendered/deploy_kubernetes_device-plugin-only.yaml" <<'EOF'
import sys
import yaml

full_path, dp_path = sys.argv[1], sys.argv[2]
with open(full_path) as f:
    full = [d for d in yaml.safe_load_all(f) if d]
with open(dp_path) as f:
    device_plugin_only = [d for d in yaml.safe_load_all(f) if d]

classes = [d for d in full if d.get("kind") == "DeviceClass"]
problems = []
if len(classes) != 1:
    problems.append(f"deploy/kubernetes has {len(classes)} DeviceClasses, not 1")
else:
    dc = classes[0]
    if dc["metadata"]["name"] != "gpuslice.io":
        problems.append(f"the DeviceClass is named {dc['metadata']['name']!r}, not 'gpuslice.io'")
    if dc.get("apiVersion") != "resource.k8s.io/v1":
        problems.append(f"the DeviceClass is {dc.get('apiVersion')}, not resource.k8s.io/v1")
    want = [{"cel": {"expression": 'device.driver == "gpuslice.io"'}}]
    if dc.get("spec", {}).get("selectors") != want:
        problems.append(f"the DeviceClass selects {dc.get('spec', {}).get('selectors')}, not {want}")
rest = [d for d in full if d.get("kind") != "DeviceClass"]
if rest != device_plugin_only:
    only_full = [f"{d['kind']}/{d['metadata']['name']}" for d in rest if d not in device_plugin_only]
    only_dp = [f"{d['kind']}/{d['metadata']['name']}" for d in device_plugin_only if d not in rest]
    problems.append(
        "deploy/kubernetes less its DeviceClass differs from deploy/kubernetes/device-plugin-only: "
        f"only in the first {only_full or '-'}, only in the second {only_dp or '-'} "
        "(or the same objects in another order)"
    )
if any(d.get("apiVersion", "").startswith("resource.k8s.io/") for d in device_plugin_only):
    problems.append("deploy/kubernetes/device-plugin-only has a resource.k8s.io object")
if problems:
    sys.exit("\n".join(problems))
print("deploy/kubernetes = deploy/kubernetes/device-plugin-only + DeviceClass gpuslice.io")
EOF

# The full install with the monitoring component, in an overlay of its own.
overlay="$rendered/with-monitoring"
mkdir -p "$overlay"
base="$(realpath --relative-to="$overlay" deploy/kubernetes)"
cat > "$overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $base
components:
  - $base/components/monitoring
EOF
kubectl kustomize "$overlay" > "$rendered/with-monitoring.yaml"
"$VENV/bin/python" - "$rendered/with-monitoring.yaml" "$rendered/deploy_kubernetes.yaml" \
    "$rendered/with-monitoring-k8s.yaml" <<'EOF'
import sys
import yaml

overlay_path, full_path, k8s_path = sys.argv[1:4]
with open(overlay_path) as f:
    overlay = [d for d in yaml.safe_load_all(f) if d]
with open(full_path) as f:
    full = [d for d in yaml.safe_load_all(f) if d]
monitors = [d for d in overlay if d.get("kind") == "PodMonitor"]
rest = [d for d in overlay if d.get("kind") != "PodMonitor"]
with open(k8s_path, "w") as f:
    yaml.safe_dump_all(rest, f)

problems = []
if rest != full:
    problems.append("the monitoring component changes the install besides adding its PodMonitor")
daemonsets = [d for d in full if d.get("kind") == "DaemonSet" and d["metadata"]["name"] == "gpuslice-node"]
if len(monitors) != 1 or len(daemonsets) != 1:
    sys.exit(f"expected one PodMonitor and one DaemonSet gpuslice-node, found {len(monitors)} and {len(daemonsets)}")
pm, ds = monitors[0], daemonsets[0]
name = f"PodMonitor {pm['metadata'].get('name')}"
if pm.get("apiVersion") != "monitoring.coreos.com/v1":
    problems.append(f"{name} is {pm.get('apiVersion')}, not monitoring.coreos.com/v1")
# A PodMonitor without a namespaceSelector selects pods of its own namespace.
spec = pm.get("spec", {})
selector = spec.get("selector", {})
ns_selector = spec.get("namespaceSelector")
ds_ns = ds["metadata"].get("namespace")
if ns_selector is None and pm["metadata"].get("namespace") != ds_ns:
    problems.append(f"{name} is in namespace {pm['metadata'].get('namespace')}, the DaemonSet's pods in {ds_ns}")
if ns_selector is not None and ds_ns not in ns_selector.get("matchNames", []) and not ns_selector.get("any"):
    problems.append(f"{name}'s namespaceSelector {ns_selector} leaves out {ds_ns}")
pod_labels = ds["spec"]["template"]["metadata"].get("labels", {})
match = selector.get("matchLabels", {})
if not match and not selector.get("matchExpressions"):
    problems.append(f"{name} selects every pod of the namespace")
for key, value in match.items():
    if pod_labels.get(key) != value:
        problems.append(f"{name} selects {key}={value}; the DaemonSet's pods have {key}={pod_labels.get(key)}")
for expr in selector.get("matchExpressions", []):
    have = pod_labels.get(expr["key"])
    op, values = expr["operator"], expr.get("values", [])
    ok = {"In": have in values, "NotIn": have not in values,
          "Exists": have is not None, "DoesNotExist": have is None}.get(op, False)
    if not ok:
        problems.append(f"{name}'s selector {expr} does not select the DaemonSet's pods ({pod_labels})")
ports = {p.get("name"): p for c in ds["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
endpoints = spec.get("podMetricsEndpoints", [])
if not endpoints:
    problems.append(f"{name} has no podMetricsEndpoints")
for ep in endpoints:
    if ep.get("port") not in ports:
        problems.append(f"{name} scrapes port {ep.get('port')!r}; the DaemonSet's ports are {sorted(ports)}")
    if ep.get("path", "/metrics") != "/metrics":
        problems.append(f"{name} scrapes {ep.get('path')}, not /metrics")
if problems:
    sys.exit("\n".join(problems))
print(f"{name} selects the pods of DaemonSet gpuslice-node "
      f"({', '.join(f'{k}={v}' for k, v in match.items())}) in {ds_ns}, "
      f"port {', '.join(ep['port'] for ep in endpoints)}; the rest is deploy/kubernetes")
EOF
for version in 1.34.0 1.36.0; do
    report="$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "$rendered/with-monitoring-k8s.yaml" 2>&1)" || {
        echo "$report"
        exit 1
    }
    if [ -n "$report" ]; then
        echo "deploy/kubernetes with components/monitoring, Kubernetes $version:"
        echo "$report"
        exit 1
    fi
done
echo "deploy/kubernetes with components/monitoring: valid for Kubernetes 1.34.0 and 1.36.0, and its PodMonitor"
