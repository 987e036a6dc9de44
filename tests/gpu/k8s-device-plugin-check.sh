#!/usr/bin/env bash
# gpuslice node as a device plugin on a real GPU, against the fake kubelet: a node config
# of two profiles on GPU 0 (8g-30: 8 GiB at 30% compute; 4g-70: 4 GiB at 70%), one slice
# of each allocated through the kubelet's device plugin API, and a PyTorch workload in a
# crun container per slice, both at once. The table has one row per container:
#   - torch.cuda.mem_get_info (total must be the slice's limit);
#   - where allocation is refused (a clean torch.OutOfMemoryError within 1 GiB below the
#     limit, the context included);
#   - its compute share, measured side by side: both containers run the same matmul loop
#     for the same window, and each one's throughput over the loop's throughput alone on
#     the GPU (measured first, on the host, in no slice) must be within 5 points of its
#     limit;
#   - nvidia-smi inside it: exactly one process (its own) and its own limit as the total.
#
# What it does:
#   1. the solo baseline (k8s_workload.py solo);
#   2. `fake-kubelet device-plugin` (Registration on <work>/kubelet/device-plugins), then
#      `gpuslice node` (mode device-plugin, with its agent); the fake kubelet allocates
#      one device of each resource and writes what Allocate answered (the CDI device);
#   3. a bundle per container (container_bundle.py, gpuslice-cdi-inject with that CDI
#      device, as container-checks.sh does), both run by crun, started together.
#
#   sudo bash tests/gpu/k8s-device-plugin-check.sh
#
# Inputs: see tests/gpu/k8s_common.sh (GPUSLICE_BIN_DIR also needs fake-kubelet).
# Exit status: 0 if every check passed, 1 otherwise. Takes about a minute, 3 at most.

CHECK="device-plugin"
# shellcheck source-path=SCRIPTDIR source=k8s_common.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/k8s_common.sh"

k8s_setup
k8s_solo

cat > "$CONFIG" <<'YAML'
default:
  mode: device-plugin
  profiles:
    - {name: 8g-30, memory: 8GiB, compute: 30, count: 1}
    - {name: 4g-70, memory: 4GiB, compute: 70, count: 1}
  gpus: [0]
YAML

R8=gpuslice.io/slice-8g-30 R4=gpuslice.io/slice-4g-70
start_bg fake-kubelet 170 "$FK" device-plugin --kubelet-dir "$KUBELET" \
    --resource "$R8" --resource "$R4" --out "$W/allocations.json" --timeout-secs 60
wait_for "$KUBELET/device-plugins/kubelet.sock" 20 fake-kubelet ||
    fail_early fake-kubelet "no kubelet.sock: $(tail -n 3 "$W/fake-kubelet.log" | tr '\n' ' ')"
# shellcheck disable=SC2119  # no extra flags
k8s_start_node
if ! wait_for "$W/allocations.json" 70 fake-kubelet node; then
    fail_early allocate "$(tail -n 3 "$W/fake-kubelet.log" | tr '\n' ' '); node: $(tail -n 3 "$W/node.log" | tr '\n' ' ')"
fi
C8="$(jget "$W/allocations.json" "$R8" cdi_devices 0)"
C4="$(jget "$W/allocations.json" "$R4" cdi_devices 0)"
if [ -z "$C8" ] || [ -z "$C4" ]; then
    fail_early allocate "no CDI device in $(tr '\n' ' ' < "$W/allocations.json" | cut -c1-300)"
fi
check allocate PASS "$R8: $(jget "$W/allocations.json" "$R8" device_id) -> $C8; $R4: $(jget "$W/allocations.json" "$R4" device_id) -> $C4"

k8s_containers 8g-30 "$C8" 8192 30 4g-70 "$C4" 4096 70
k8s_finish
