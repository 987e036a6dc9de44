#!/usr/bin/env bash
# Renders every kustomization under deploy/ with `kubectl kustomize` and validates the
# output offline, strictly (unknown fields are errors), against the Kubernetes API
# schemas of the oldest and newest versions it is meant for:
#   deploy/kubernetes (with the DeviceClass, resource.k8s.io/v1)  1.34 and 1.36
#   deploy/kubernetes/device-plugin-only and its base             1.30 and 1.36
# Then checks that the two installs differ by exactly one object, the DeviceClass
# `gpuslice.io` that selects the driver's devices.
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
