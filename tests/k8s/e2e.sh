#!/usr/bin/env bash
# End-to-end test of gpuslice's DRA mode on a real cluster (not run in CI): installs the
# manifests, then runs two pods that share one GPU through two different claims
# (8Gi/30% and 4Gi/70%) and checks, in each pod, what its slice looks like.
#
#   GPUSLICE_IMAGE=registry.example/gpuslice:dev bash tests/k8s/e2e.sh
#
# Needs:
#   * kubectl 1.31 or later, its current context pointing at the cluster (admin rights:
#     it installs a namespace, RBAC, a DaemonSet and a DeviceClass);
#   * Kubernetes 1.34 or later with consumable capacity on: 1.36+, or 1.34/1.35 with the
#     DRAConsumableCapacity feature gate on kube-apiserver, kube-scheduler and kubelet.
#     For kind, in the cluster config:   featureGates: {DRAConsumableCapacity: true}
#   * a node with an NVIDIA GPU (at least 13 GiB) and its driver, labelled
#     nvidia.com/gpu.present=true or feature.node.kubernetes.io/pci-10de.present=true,
#     whose container runtime has CDI on (containerd 2.x, CRI-O; containerd 1.7 needs
#     enable_cdi = true);
#   * the gpuslice image, built with deploy/Dockerfile and pushed where the node can pull
#     it (for kind: `kind load docker-image`).
#
# Environment:
#   GPUSLICE_IMAGE     the gpuslice image (required), name[:tag] or name@sha256:...
#   E2E_TORCH_IMAGE    a CUDA image with PyTorch for the two pods
#                      (default pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime)
#   E2E_NODE           the GPU node to test (default: the first one gpuslice runs on)
#   E2E_TIMEOUT        seconds each wait may take, image pulls included (default 600)
#   E2E_KEEP_INSTALL   1: leave gpuslice installed afterwards (the test pods go anyway)
#   E2E_USE_EXISTING   1: test a gpuslice that is already installed instead of refusing
#                      to overwrite it (it is then left installed)
#
# Exit status: 0 when every check passed; 1 otherwise. Everything it created is deleted
# on exit, also on failure or Ctrl-C.
set -euo pipefail
export LC_ALL=C

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
REPO="$(cd "$HERE/../.." && pwd -P)"
SYSTEM_NS=gpuslice-system
NS="gpuslice-e2e-$(date +%s)"
TORCH_IMAGE="${E2E_TORCH_IMAGE:-pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime}"
TIMEOUT="${E2E_TIMEOUT:-600}"
DS_LABEL=app.kubernetes.io/name=gpuslice-node
PODS=(e2e-a e2e-b)
declare -A MEMORY=([e2e-a]=8Gi [e2e-b]=4Gi) LIMIT=([e2e-a]=$((8 << 30)) [e2e-b]=$((4 << 30)))
declare -A COMPUTE=([e2e-a]=30 [e2e-b]=70) HOLD=([e2e-a]=1024 [e2e-b]=512)

say() { printf '%s\n' "$*"; }
table() { if command -v column >/dev/null; then column -t -s $'\t'; else cat; fi; }
step() { printf '\n== %s\n' "$*"; }
die() {
    printf 'e2e: %s\n' "$*" >&2
    exit 1
}

work=""
installed=0
ns_created=0
slice=""
# shellcheck disable=SC2317  # run by the EXIT trap
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [ "$ns_created" = 1 ]; then
        step "cleanup: namespace $NS"
        kubectl delete namespace "$NS" --wait=true --timeout=180s
    fi
    if [ "$installed" = 1 ] && [ "${E2E_KEEP_INSTALL:-0}" != 1 ]; then
        step "cleanup: gpuslice"
        kubectl delete -k "$work/overlay" --ignore-not-found --wait=true --timeout=180s
        # The slice is owned by the Node, so it outlives the DaemonSet.
        [ -n "$slice" ] && kubectl delete resourceslice "$slice" --ignore-not-found --timeout=60s
    fi
    [ -n "$work" ] && rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# "1.34+" (some providers add a suffix) -> 34.
minor_of() { sed -n "s/.*\"minor\": *\"\([0-9]*\).*/\1/p" | head -n 1; }

# ---------------------------------------------------------------------------------
step "preflight"
[ -n "${GPUSLICE_IMAGE:-}" ] ||
    die "GPUSLICE_IMAGE is not set: build deploy/Dockerfile, push it where the node pulls from, and name it here"
command -v kubectl >/dev/null || die "kubectl is not on PATH"
context="$(kubectl config current-context 2>/dev/null)" || die "kubectl has no current context"
client_minor="$(kubectl version --client -o json | minor_of)"
[ "${client_minor:-0}" -ge 31 ] || die "kubectl 1.$client_minor is too old: \`kubectl wait --for=create\` needs 1.31 or later"
server="$(kubectl get --raw /version)" || die "cannot reach the API server of context $context"
server_minor="$(minor_of <<<"$server")"
server_major="$(sed -n 's/.*"major": *"\([0-9]*\).*/\1/p' <<<"$server" | head -n 1)"
server_version="$(sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p' <<<"$server")"
say "context $context, server $server_version"
if [ "${server_major:-0}" -eq 1 ] && [ "${server_minor:-0}" -lt 34 ]; then
    die "Kubernetes $server_version has no resource.k8s.io/v1 (GA in 1.34): DRA mode needs 1.34 or later; this cluster gets the device plugin (deploy/kubernetes/device-plugin-only)"
fi
kubectl api-versions | grep -qx 'resource.k8s.io/v1' ||
    die "the API server does not serve resource.k8s.io/v1 (is --runtime-config turning it off?)"
kubectl api-resources --api-group=resource.k8s.io -o name | grep -qx 'deviceclasses.resource.k8s.io' ||
    die "the API server serves no deviceclasses.resource.k8s.io"
if kubectl get crd deviceclasses.resource.k8s.io >/dev/null 2>&1; then
    die "deviceclasses.resource.k8s.io is a CustomResourceDefinition here, not the built-in API"
fi
gpu_nodes="$( (kubectl get nodes -l nvidia.com/gpu.present=true -o name
    kubectl get nodes -l feature.node.kubernetes.io/pci-10de.present=true -o name) | sort -u)"
[ -n "$gpu_nodes" ] ||
    die "no node is labelled nvidia.com/gpu.present=true or feature.node.kubernetes.io/pci-10de.present=true: label the GPU node (kubectl label node NAME nvidia.com/gpu.present=true)"
say "GPU nodes: $(echo "$gpu_nodes" | sed 's|node/||' | tr '\n' ' ')"

# ---------------------------------------------------------------------------------
step "install gpuslice ($GPUSLICE_IMAGE)"
work="$(mktemp -d)"
mkdir "$work/overlay"
# kustomize takes bases by relative path only: climb from the overlay to / first.
up=""
d="$(cd "$work/overlay" && pwd -P)"
while [ "$d" != / ]; do
    up="../$up"
    d="$(dirname "$d")"
done
case "$GPUSLICE_IMAGE" in
    *@*) image_name="${GPUSLICE_IMAGE%@*}" image_field="digest: ${GPUSLICE_IMAGE#*@}" ;;
    *)
        last="${GPUSLICE_IMAGE##*/}"
        if [[ "$last" == *:* ]]; then
            image_name="${GPUSLICE_IMAGE%:*}" image_field="newTag: \"${GPUSLICE_IMAGE##*:}\""
        else
            image_name="$GPUSLICE_IMAGE" image_field='newTag: "latest"'
        fi
        ;;
esac
cat >"$work/overlay/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ${up}${REPO#/}/deploy/kubernetes
images:
  - name: ghcr.io/gpuslice/gpuslice
    newName: $image_name
    $image_field
EOF
if kubectl -n "$SYSTEM_NS" get daemonset gpuslice-node >/dev/null 2>&1; then
    [ "${E2E_USE_EXISTING:-0}" = 1 ] ||
        die "gpuslice is already installed ($SYSTEM_NS/gpuslice-node): set E2E_USE_EXISTING=1 to test it as it is, or uninstall it first"
    say "testing the gpuslice already installed (E2E_USE_EXISTING=1); GPUSLICE_IMAGE is not applied"
else
    installed=1
    kubectl apply -k "$work/overlay"
fi
kubectl get deviceclass gpuslice.io >/dev/null || die "DeviceClass gpuslice.io is missing after the install"
kubectl -n "$SYSTEM_NS" rollout status daemonset/gpuslice-node --timeout="${TIMEOUT}s" ||
    die "the DaemonSet did not roll out in ${TIMEOUT}s: kubectl -n $SYSTEM_NS describe pods -l $DS_LABEL"
desired="$(kubectl -n "$SYSTEM_NS" get daemonset gpuslice-node -o jsonpath='{.status.desiredNumberScheduled}')"
[ "${desired:-0}" -ge 1 ] || die "the DaemonSet is scheduled on no node; check the GPU node's labels and taints"

node="${E2E_NODE:-$(kubectl -n "$SYSTEM_NS" get pods -l "$DS_LABEL" -o jsonpath='{.items[0].spec.nodeName}')}"
plugin_pod="$(kubectl -n "$SYSTEM_NS" get pods -l "$DS_LABEL" --field-selector "spec.nodeName=$node" \
    -o jsonpath='{.items[0].metadata.name}')"
[ -n "$plugin_pod" ] || die "gpuslice runs on no pod of node $node"
say "node $node, plugin pod $plugin_pod, runtime $(kubectl get node "$node" -o jsonpath='{.status.nodeInfo.containerRuntimeVersion}')"

# ---------------------------------------------------------------------------------
slice="$node-gpuslice.io"
step "ResourceSlice $slice"
if ! kubectl wait --for=create "resourceslice/$slice" --timeout="${TIMEOUT}s"; then
    kubectl -n "$SYSTEM_NS" logs "$plugin_pod" --tail=40 || true
    die "no ResourceSlice $slice after ${TIMEOUT}s. With mode auto the node falls back to the device plugin when consumable capacity is off (the log above says why): turn on the DRAConsumableCapacity feature gate (kube-apiserver, kube-scheduler, kubelet) on 1.34/1.35"
fi
multiple="$(kubectl get resourceslice "$slice" -o jsonpath='{.spec.devices[0].allowMultipleAllocations}')"
[ "$multiple" = true ] ||
    die "device 0 of $slice has allowMultipleAllocations '$multiple', not true: the API server dropped the field, so the DRAConsumableCapacity feature gate is off (kube-apiserver, kube-scheduler, kubelet)"
kubectl get resourceslice "$slice" -o jsonpath='{range .spec.devices[*]}  {.name}: {.attributes.uuid.string} {.attributes.model.string}, memory {.capacity.memory.value}, compute {.capacity.compute.value}, allowMultipleAllocations {.allowMultipleAllocations}{"\n"}{end}'
device="$(kubectl get resourceslice "$slice" -o jsonpath='{.spec.devices[0].name}')"
uuid="$(kubectl get resourceslice "$slice" -o jsonpath='{.spec.devices[0].attributes.uuid.string}')"
[ -n "$uuid" ] || die "device $device of $slice has no uuid attribute"
say "both claims are pinned to $device ($uuid)"

# ---------------------------------------------------------------------------------
step "two pods, two claims, one GPU (namespace $NS)"
kubectl create namespace "$NS"
ns_created=1
kubectl -n "$NS" create configmap e2e-scripts \
    --from-file=pod_holder.py="$HERE/pod_holder.py" --from-file=pod_check.py="$HERE/pod_check.py"
for pod in "${PODS[@]}"; do
    cat <<EOF
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata:
  name: $pod-gpu
  namespace: $NS
spec:
  spec:
    devices:
      requests:
        - name: gpu
          exactly:
            deviceClassName: gpuslice.io
            selectors:
              - cel:
                  expression: 'device.attributes["gpuslice.io"].uuid == "$uuid"'
            capacity:
              requests: {memory: ${MEMORY[$pod]}, compute: "${COMPUTE[$pod]}"}
---
apiVersion: v1
kind: Pod
metadata:
  name: $pod
  namespace: $NS
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 5
  tolerations:
    - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
  resourceClaims:
    - name: gpu
      resourceClaimTemplateName: $pod-gpu
  volumes:
    - name: scripts
      configMap: {name: e2e-scripts}
  containers:
    - name: torch
      image: $TORCH_IMAGE
      command: ["python3", "/e2e/pod_holder.py"]
      env:
        - {name: HOLD_MIB, value: "${HOLD[$pod]}"}
        - {name: HOLD_SECONDS, value: "$((TIMEOUT * 3))"}
        - {name: PYTHONUNBUFFERED, value: "1"}
      resources:
        claims:
          - name: gpu
      volumeMounts:
        - {name: scripts, mountPath: /e2e, readOnly: true}
      readinessProbe:
        exec: {command: ["test", "-s", "/tmp/holder.pid"]}
        periodSeconds: 2
---
EOF
done | kubectl apply -f -

for pod in "${PODS[@]}"; do
    if ! kubectl -n "$NS" wait --for=condition=Ready "pod/$pod" --timeout="${TIMEOUT}s"; then
        kubectl -n "$NS" describe pod "$pod" | tail -n 25 || true
        kubectl -n "$NS" logs "$pod" --tail=20 || true
        die "pod $pod is not Ready after ${TIMEOUT}s (phase $(kubectl -n "$NS" get pod "$pod" -o jsonpath='{.status.phase}'))"
    fi
done

# ---------------------------------------------------------------------------------
step "checks"
declare -A ROW
failed=0
fail() {
    say "FAILED $1"
    failed=1
}
share_ids=()
for pod in "${PODS[@]}"; do
    on="$(kubectl -n "$NS" get pod "$pod" -o jsonpath='{.spec.nodeName}')"
    [ "$on" = "$node" ] || fail "$pod runs on $on, not $node"
    claim="$(kubectl -n "$NS" get pod "$pod" -o jsonpath='{.status.resourceClaimStatuses[0].resourceClaimName}')"
    [ -n "$claim" ] || die "pod $pod has no generated ResourceClaim"
    result='.status.allocation.devices.results[0]'
    allocation="$(kubectl -n "$NS" get resourceclaim "$claim" -o jsonpath="{$result.driver}|{$result.pool}|{$result.device}|{$result.shareID}|{$result.consumedCapacity.memory}|{$result.consumedCapacity.compute}")" ||
        die "cannot read ResourceClaim $NS/$claim"
    IFS='|' read -r a_driver a_pool a_device a_share a_memory a_compute <<<"$allocation"
    a_uuid="$(kubectl get resourceslice "$slice" -o jsonpath="{.spec.devices[?(@.name==\"$a_device\")].attributes.uuid.string}")"
    say "$pod: claim $claim -> $a_driver $a_pool/$a_device ($a_uuid), share ${a_share:-none}, consumed memory ${a_memory:-none} compute ${a_compute:-none}"
    [ "$a_driver" = gpuslice.io ] || fail "$pod: claim $claim allocated by driver '$a_driver'"
    [ "$a_pool" = "$node" ] || fail "$pod: claim $claim allocated from pool '$a_pool', not $node"
    [ "$a_uuid" = "$uuid" ] || fail "$pod: claim $claim is on GPU '$a_uuid', not $uuid"
    [ -n "$a_share" ] || fail "$pod: claim $claim has no shareID: the device was not allocated as shared"
    [ "$a_memory" = "${MEMORY[$pod]}" ] || fail "$pod: claim $claim consumed memory '$a_memory', not ${MEMORY[$pod]}"
    [ "$a_compute" = "${COMPUTE[$pod]}" ] || fail "$pod: claim $claim consumed compute '$a_compute', not ${COMPUTE[$pod]}"
    share_ids+=("$a_share")

    out="$(timeout 300 kubectl -n "$NS" exec "$pod" -- \
        python3 /e2e/pod_check.py "${LIMIT[$pod]}" "${COMPUTE[$pod]}" "$uuid" 2>&1)" ||
        fail "$pod: pod_check.py failed"
    printf '%s\n' "$out" | sed "s/^/  $pod| /"
    for key in torch_total alloc_within oom_past_limit smi_total smi_pids slice_gpu slice_compute; do
        ROW[$pod.$key]="$(printf '%s\n' "$out" | sed -n "s/^$key=//p" | head -n 1)"
        [ -n "${ROW[$pod.$key]}" ] || fail "$pod: pod_check.py did not report $key"
    done
    ROW[$pod.device]="$a_device"
    ROW[$pod.share]="${a_share:-none}"
    ROW[$pod.claim]="${a_memory:-?}/${a_compute:-?}%"
done
if [ "${#share_ids[@]}" -ne 2 ] || [ "${share_ids[0]}" = "${share_ids[1]}" ]; then
    fail "the two claims have one shareID (${share_ids[*]}): they are not two shares of the GPU"
fi

step "results (GPU $uuid on $node)"
{
    printf 'pod\tclaim\tdevice\tshareID\ttorch total\tpast limit\tnvidia-smi total\tnvidia-smi PIDs\tslice compute\n'
    for pod in "${PODS[@]}"; do
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$pod" "${ROW[$pod.claim]}" "${ROW[$pod.device]}" \
            "${ROW[$pod.share]}" "${ROW[$pod.torch_total]}" "${ROW[$pod.oom_past_limit]}" \
            "${ROW[$pod.smi_total]}" "${ROW[$pod.smi_pids]}" "${ROW[$pod.slice_compute]}%"
    done
} | table

if [ "$failed" = 0 ]; then
    say "PASSED: two pods share GPU $uuid through claims of 8Gi/30% and 4Gi/70%, each held to its own limit"
else
    say "FAILED: see the lines above"
fi
exit "$failed"
