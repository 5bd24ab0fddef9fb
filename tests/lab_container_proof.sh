#!/usr/bin/env bash
# Proof that the Slurm lab runs job steps inside its container: one batch job on 2 lab nodes whose srun steps run
# python3 in the lab image (scripts/lab-image) under bubblewrap, the launch line docs/containers.md describes.
#
#   tests/lab_container_proof.sh        needs the lab up (scripts/slurm-lab up) and the image built
#
# Checks, from what each task reports (tests/lab_container_probe.py) and what lands on the host:
#   (a) only mounted host paths are visible: host paths such as /work/main are absent inside; a host directory
#       mounted at the same path is there, read-write; the package is importable from its mount only
#   (b) the environment reaches the tasks: a variable exported by the batch script, one set with --setenv,
#       srun's per-task SLURM_PROCID; PATH is the image's
#   (c) the working directory is the one asked for
#   (d) a torch gloo all-reduce across the two tasks (MASTER_ADDR = first host of the allocation) sums right
#   (e) USR2 sent to the step reaches python inside on both nodes, and the step succeeds: by scancel --signal=USR2,
#       and by srun, which forwards it to its tasks
# Environment: PROOF_ROOT (where the mounted directory is made, default /var/tmp), LAB_IMAGE_DIR (the image; default
# the one of this recipe), PROOF_KEEP=1 keeps the directory after a pass. Exit 0 only when every check passes.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
image=${LAB_IMAGE_DIR:-$(bash "$repo/scripts/lab-image" path)}
dir=$(mktemp -d "${PROOF_ROOT:-/var/tmp}/lab-container-proof.XXXXXX")
log() { printf '[lab-container-proof] %s\n' "$*"; }

mkdir -p "$dir/out" "$dir/work"
cp "$repo/tests/lab_container_probe.py" "$dir/"
absent=()
for path in /work/main "$repo" /var/log/slurm-lab /opt/wheels /root/.cache; do
    [[ -e $path ]] && absent+=("$path")
done

# The batch script: its own variables come through sbatch's environment (PROBE_*); quoted heredoc, no expansion here.
cat >"$dir/job.sh" <<'EOF'
#!/bin/bash
set -euo pipefail
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR
export MASTER_PORT=$((20000 + SLURM_JOB_ID % 10000))
export PROBE_FROM_BATCH="exported by the batch script"
rootfs=$PROBE_IMAGE/rootfs
signals=HUP,INT,TERM,USR1,USR2
# The container prefix: bubblewrap's monitor ignores the signals Slurm sends to the step (so it outlives them),
# and the program inside gets the default dispositions back; Slurm signals the program itself.
container=(
    env "--ignore-signal=$signals"
    bwrap --die-with-parent
    --ro-bind "$rootfs/usr" /usr --ro-bind "$rootfs/etc" /etc
    --symlink usr/bin /bin --symlink usr/sbin /sbin --symlink usr/lib /lib --symlink usr/lib64 /lib64
    --proc /proc --dev /dev --ro-bind /sys /sys --tmpfs /tmp
    --ro-bind /etc/hosts /etc/hosts --ro-bind /etc/resolv.conf /etc/resolv.conf
    --bind "$PROBE_DIR" "$PROBE_DIR"
    --ro-bind "$PROBE_PACKAGE" /opt/orchestrator/orchestrator
    --setenv PATH /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    --setenv PYTHONPATH /opt/orchestrator
    --setenv PROBE_FROM_SETENV "set by bwrap --setenv"
    --chdir "$PROBE_DIR/work"
    -- env "--default-signal=$signals"
)
printf 'launch:'; printf ' %q' srun --kill-on-bad-exit=1 --unbuffered "${container[@]}" python3 -u PROBE; echo
echo "host PATH: $PATH"

t0=$SECONDS
srun --kill-on-bad-exit=1 --unbuffered "${container[@]}" python3 -u "$PROBE_DIR/lab_container_probe.py" info "$PROBE_DIR/out"
echo "step info: $((SECONDS - t0))s"

# USR2 to the step, two ways: scancel (the step, not this script), and to srun, which forwards it to its tasks
# (what the orchestrator's driver does before a time limit).
rc=0
for how in scancel srun; do
    mkdir -p "$PROBE_DIR/out/$how"
    t0=$SECONDS
    srun --kill-on-bad-exit=1 --unbuffered "${container[@]}" python3 -u "$PROBE_DIR/lab_container_probe.py" signal "$PROBE_DIR/out/$how" &
    step=$!
    for _ in $(seq 300); do
        [[ -e $PROBE_DIR/out/$how/ready-0 && -e $PROBE_DIR/out/$how/ready-1 ]] && break
        sleep 0.2
    done
    if [[ $how == scancel ]]; then scancel --signal=USR2 "$SLURM_JOB_ID"; else kill -USR2 "$step"; fi
    step_rc=0
    wait "$step" || step_rc=$?
    echo "step signal by $how: exit $step_rc after $((SECONDS - t0))s"
    ((step_rc == 0)) || rc=$step_rc
done
exit "$rc"
EOF

log "image $image; mounted directory $dir"
t0=$SECONDS
rc=0
timeout 300 sbatch --wait --parsable -N2 --ntasks-per-node=1 -p debug -t 5 -J lab-container-proof \
    -o "$dir/job.out" \
    --export="ALL,PROBE_IMAGE=$image,PROBE_DIR=$dir,PROBE_PACKAGE=$repo/orchestrator,PROBE_ABSENT=$(IFS=:; echo "${absent[*]}")" \
    "$dir/job.sh" >"$dir/job.id" || rc=$?
log "job $(cat "$dir/job.id" 2>/dev/null) ended with $rc after $((SECONDS - t0))s; its output:"
sed 's/^/    /' "$dir/job.out" || true

status=0
python3 - "$dir" "$image" "${absent[@]}" <<'EOF' || status=$?
import json, sys
from pathlib import Path

dir, image, absent = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
image_id = dict(line.split("=", 1) for line in (image / "image.env").read_text().split())
failures = []


def check(ok, what):
    print(f"{'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


infos = [json.loads((dir / "out" / f"info-{r}.json").read_text()) for r in (0, 1) if (dir / "out" / f"info-{r}.json").exists()]
check(len(infos) == 2, "two tasks reported")
if len(infos) == 2:
    check(sorted(i["rank"] for i in infos) == [0, 1] and len({i["node"] for i in infos}) == 2,
          f"ranks 0 and 1 on two nodes: {[(i['rank'], i['node']) for i in infos]}")
    for i in infos:
        r = f"rank {i['rank']} ({i['node']})"
        check(i["image"].get("ORCHESTRATOR_IMAGE_RECIPE") == image_id["ORCHESTRATOR_IMAGE_RECIPE"]
              and i["image"].get("ORCHESTRATOR_IMAGE_DIGEST") == image_id["ORCHESTRATOR_IMAGE_DIGEST"],
              f"{r}: runs the image {image_id['ORCHESTRATOR_IMAGE_RECIPE']} ({image_id['ORCHESTRATOR_IMAGE_DIGEST'][:19]}...)")
        check(i["python"] == "/usr/bin/python3" and i["python_version"].startswith("3.11.") and "bookworm" in i["os_release"],
              f"{r}: the image's python: {i['python']} {i['python_version']}, {i['os_release']}")
        check(all(i["absent"].get(p) for p in absent), f"(a) {r}: host paths absent inside: {', '.join(absent)}")
        check((dir / "out" / f"written-by-rank-{i['rank']}").exists(), f"(a) {r}: wrote through the same-path mount {dir}")
        check(i["imports"].get("orchestrator_from", "").startswith("/opt/orchestrator/orchestrator/")
              and not i["orchestrator_in_image"] and i["imports"].get("mistral_common") == "absent",
              f"(a) {r}: orchestrator imported from its mount only, not in the image; mistral_common absent")
        bad = {k: v for k, v in i["imports"].items() if k.startswith("orchestrator.") and v != "ok"}
        check(not bad, f"{r}: in-job modules import in the image" + (f": {bad}" if bad else ""))
        env = i["env"]
        check(env["PROBE_FROM_BATCH"] == "exported by the batch script" and env["PROBE_FROM_SETENV"] == "set by bwrap --setenv"
              and env["SLURM_PROCID"] == str(i["rank"]) and env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              f"(b) {r}: env reaches the task (batch export, --setenv, SLURM_PROCID={env['SLURM_PROCID']}, image PATH)")
        check(i["cwd"] == str(dir / "work") and (dir / "work" / f"cwd-marker-{i['rank']}").exists(), f"(c) {r}: working directory {i['cwd']}")
        ar = i["all_reduce"]
        check(ar["sum"] == ar["expected"] == 3, f"(d) {r}: gloo all_reduce over {ar['world']} tasks = {ar['sum']} (expected {ar['expected']}), {ar['seconds']}s; MASTER_ADDR={env['MASTER_ADDR']}")
job_out = (dir / "job.out").read_text()
for how in ("scancel", "srun"):
    for r in (0, 1):
        got = dir / "out" / how / f"usr2-{r}"
        check(got.exists(), f"(e) rank {r}: SIGUSR2 by {how} reached python inside" + (f": {got.read_text().strip()}" if got.exists() else ""))
    check(f"step signal by {how}: exit 0" in job_out, f"(e) the step signalled by {how} exited 0 (the runtime outlived the signal)")
print("PASS" if not failures else f"FAIL: {len(failures)} checks")
sys.exit(1 if failures else 0)
EOF
if ((status == 0 && rc == 0)) && [[ ${PROOF_KEEP:-0} != 1 ]]; then rm -rf "$dir"; else log "kept $dir"; fi
exit $((status || rc))
