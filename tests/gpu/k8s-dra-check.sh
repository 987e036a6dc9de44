#!/usr/bin/env bash
# gpuslice node as a DRA driver on a real GPU, against the fake kubelet and its fake API
# server: two claims on GPU 0 (a: 8 GiB at 30% compute; b: 4 GiB at 70%), prepared
# through the kubelet's DRA API, and a PyTorch workload in a crun container per claim,
# both at once. The same table as k8s-device-plugin-check.sh (mem_get_info, OOM at the
# limit, compute share measured side by side, nvidia-smi inside), then:
#   - resourceslice: the node published its ResourceSlice (device gpu-0's capacities
#     are printed);
#   - unprepare: on SIGTERM the fake kubelet unprepared both claims without error;
#   - cdi-clean, state-clean: no claim's CDI spec is left in the CDI folder and no file
#     in <state-dir>/dra/.
#
# What it does:
#   1. the solo baseline (k8s_workload.py solo);
#   2. `fake-kubelet dra` first (it serves the API server and writes the kubeconfig),
#      then `gpuslice node --kubeconfig` (mode dra, with its agent); the fake kubelet
#      registers the driver, waits for the ResourceSlice, creates the claims allocated
#      on gpu-0 and prepares them (their CDI devices go to claims.json);
#   3. a bundle per container with its claim's CDI device, both run by crun together;
#   4. SIGTERM to the fake kubelet (NodeUnprepareResources), and the checks above.
#
#   sudo bash tests/gpu/k8s-dra-check.sh
#
# Inputs: see tests/gpu/k8s_common.sh (GPUSLICE_BIN_DIR also needs fake-kubelet).
# Exit status: 0 if every check passed, 1 otherwise. Takes about a minute, 3 at most.

CHECK=dra
# shellcheck source-path=SCRIPTDIR source=k8s_common.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/k8s_common.sh"

k8s_setup
k8s_solo

cat > "$CONFIG" <<'YAML'
default:
  mode: dra
  gpus: [0]
YAML

OUTJ="$W/claims.json"
start_bg fake-kubelet 170 "$FK" dra --kubelet-dir "$KUBELET" --node "$NODE_NAME" \
    --kubeconfig-out "$W/kubeconfig.yaml" --claim a=8Gi,30 --claim b=4Gi,70 \
    --out "$OUTJ" --timeout-secs 60
wait_for "$W/kubeconfig.yaml" 20 fake-kubelet ||
    fail_early fake-kubelet "no kubeconfig: $(tail -n 3 "$W/fake-kubelet.log" | tr '\n' ' ')"
k8s_start_node --kubeconfig "$W/kubeconfig.yaml"
if ! wait_for "$OUTJ" 70 fake-kubelet node; then
    fail_early prepare "$(tail -n 3 "$W/fake-kubelet.log" | tr '\n' ' '); node: $(tail -n 3 "$W/node.log" | tr '\n' ' ')"
fi

# The ResourceSlice as the driver sent it (the fake kubelet logs it).
"$PY" - "$W/fake-kubelet.log" > "$W/resourceslice.txt" 2>&1 <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if ": resourceslice " in line:
        s = json.loads(line[line.index("{"):])
        for d in s["spec"]["devices"]:
            cap = {k: v["value"] for k, v in d.get("capacity", {}).items()}
            print(f"{s['metadata']['name']} {d['name']} memory={cap.get('memory')} "
                  f"compute={cap.get('compute')} shareable={d.get('allowMultipleAllocations')}")
        break
PY
if grep -q "gpu-0 memory=[0-9].* compute=100 shareable=True" "$W/resourceslice.txt"; then
    check resourceslice PASS "$(tr '\n' ';' < "$W/resourceslice.txt")"
else
    check resourceslice FAIL "$(tr '\n' ';' < "$W/resourceslice.txt" | cut -c1-200)"
fi

CA="$(jget "$OUTJ" a cdi_devices 0)" CB="$(jget "$OUTJ" b cdi_devices 0)"
UA="$(jget "$OUTJ" a uid)" UB="$(jget "$OUTJ" b uid)"
if [ "$(jget "$OUTJ" a error)" = null ] && [ "$(jget "$OUTJ" b error)" = null ] && [ -n "$CA" ] && [ -n "$CB" ]; then
    check prepare PASS "a ($UA) -> $CA; b ($UB) -> $CB"
else
    fail_early prepare "$(tr '\n' ' ' < "$OUTJ" | cut -c1-300)"
fi
"$INJECT" --spec-dir "$CDI" --list > "$W/cdi-before.txt" 2>&1

k8s_containers a "$CA" 8192 30 b "$CB" 4096 70

# Unprepare: SIGTERM to the fake kubelet, which calls NodeUnprepareResources.
stop_bg fake-kubelet
UNP="$(tr -s ' \n' ' ' < "$OUTJ.unprepared" 2>/dev/null)"
if [ "$STOPPED_RC" = 0 ] && [ "$(jget "$OUTJ.unprepared" a)" = null ] && [ "$(jget "$OUTJ.unprepared" b)" = null ]; then
    check unprepare PASS "rc=0 $UNP"
else
    check unprepare FAIL "rc=$STOPPED_RC ${UNP:-no $OUTJ.unprepared}; $(tail -n 2 "$W/fake-kubelet.log" | tr '\n' ' ')"
fi
"$INJECT" --spec-dir "$CDI" --list > "$W/cdi-after.txt" 2>&1
left="$(grep -Fx -e "$CA" -e "$CB" "$W/cdi-after.txt"; grep -rlF -e "$UA" -e "$UB" "$CDI" 2>/dev/null)"
if [ -z "$left" ] && grep -qFx "$CA" "$W/cdi-before.txt"; then
    check cdi-clean PASS "before: $(tr '\n' ' ' < "$W/cdi-before.txt" | cut -c1-150); after: $(tr '\n' ' ' < "$W/cdi-after.txt" | cut -c1-80)"
else
    check cdi-clean FAIL "left: $(printf '%s' "$left" | tr '\n' ' ' | cut -c1-200); before: $(tr '\n' ' ' < "$W/cdi-before.txt" | cut -c1-100)"
fi
left="$(find "$STATE/dra" -type f 2>/dev/null)"
if [ -d "$STATE/dra" ] && [ -z "$left" ]; then
    check state-clean PASS "$STATE/dra is empty"
else
    check state-clean FAIL "$([ -d "$STATE/dra" ] || echo "no $STATE/dra; ")left: $(printf '%s' "$left" | tr '\n' ' ' | cut -c1-200)"
fi
k8s_finish
