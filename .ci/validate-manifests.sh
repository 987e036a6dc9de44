#!/usr/bin/env bash
# Renders every kustomization under deploy/ with `kubectl kustomize` and validates the
# output offline, strictly (unknown fields are errors), against the Kubernetes API
# schemas of the oldest and newest versions gpuslice supports: 1.30 and 1.36.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${KV_VENV:-target/kubernetes-validate-venv}"
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==1.37.0"
fi
rendered="$(mktemp)"
trap 'rm -f "$rendered"' EXIT
count=0
while IFS= read -r dir; do
    kubectl kustomize "$dir" > "$rendered"
    for version in 1.30.0 1.36.0; do
        "$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "$rendered"
    done
    echo "$dir: $(grep -c '^kind:' "$rendered") objects, valid for Kubernetes 1.30 and 1.36"
    count=$((count + 1))
done < <(find deploy -name kustomization.yaml -printf '%h\n' | sort)
[ "$count" -gt 0 ] || { echo "no kustomization under deploy/"; exit 1; }
