#!/usr/bin/env bash
# Build the Docker image and run the BIDS App inside it the way users do.
#
#   make image-test            (or: bash scripts/image-test.sh)
#
# Not part of `make test`: it downloads gigabytes (torch + CUDA wheels) and needs a
# running Docker daemon. Steps:
#   1. base image: $BASE_IMAGE if set, else debian:bookworm-slim (local or pulled),
#      else a Debian 12 rootfs made with `debootstrap --variant=minbase` and
#      `docker import`ed as bids-amyloid-base:bookworm (needs root and debootstrap);
#   2. build with BuildKit, WEIGHTS=none by default (the BiomedCLIP download needs
#      the Hugging Face hub), the system CA bundle passed as a build secret;
#   3. run the app in containers with --network none --read-only --tmpfs /tmp,
#      as the invoking user, BIDS input mounted read-only, output read-write:
#      --version, --help, simulate a small cohort, participant → group (a tiny test ViT,
#      the demo's CPU protocol via --config) → predict, a bad invocation (64),
#      a missing input (66), the missing-weights message (66), a weights mount;
#      when the invoking user is root, participant + predict again as 1000:1000;
#   4. check: outputs exist and belong to the user who ran the container, the
#      input is unchanged, and `docker diff` of every container is empty (nothing
#      written outside the mounts and /tmp; --read-only enforces it as well);
#   5. print build time, image size and wall time per level.
#
# Environment: DOCKER (client), IMAGE (tag), BASE_IMAGE, WEIGHTS (none|biomedclip),
# CA_BUNDLE (file passed as the `ca` build secret; empty: none), BUILD_NETWORK
# (host by default: works with a daemon started with --bridge=none), NO_CACHE=1,
# SUBJECTS / HELD_OUT (cohort size), WORK (scratch folder, kept on failure), KEEP=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$ROOT/bids_amyloid/__init__.py")
WEIGHTS=${WEIGHTS:-none}
IMAGE=${IMAGE:-bids-amyloid:${VERSION}-test}
CA_BUNDLE=${CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}
BUILD_NETWORK=${BUILD_NETWORK:-host}
SUBJECTS=${SUBJECTS:-10}
HELD_OUT=${HELD_OUT:-2}
WORK=${WORK:-$(mktemp -d /tmp/bids-amyloid-image-test.XXXXXX)}
LOCAL_BASE=bids-amyloid-base:bookworm
UID_GID="$(id -u):$(id -g)"
OTHER_UID_GID=1000:1000
RUN_FLAGS=(--network none --read-only --tmpfs /tmp)
declare -A SECONDS_OF=()
FAILED=0

say() { printf '\n=== %s\n' "$*"; }
die() { printf 'image-test: FAIL: %s\n' "$*" >&2; exit 1; }
check() {  # check DESCRIPTION COMMAND...: run a check, count a failure
    if "${@:2}"; then printf 'ok   %s\n' "$1"; else printf 'FAIL %s\n' "$1"; FAILED=$((FAILED + 1)); fi
}

docker_client() {
    # a client that can build with BuildKit (--secret, RUN --mount): a modern
    # `docker` with buildx, or an older one with the builder built in
    local candidate
    for candidate in "${DOCKER:-docker}" /usr/bin/docker /usr/local/bin/docker; do
        if command -v "$candidate" >/dev/null \
            && DOCKER_BUILDKIT=1 "$candidate" build --help 2>/dev/null | grep -q -- --secret; then
            echo "$candidate"
            return
        fi
    done
    die "no docker client that builds with BuildKit (install docker-buildx, or set DOCKER)"
}

base_image() {
    if [ -n "${BASE_IMAGE:-}" ]; then echo "$BASE_IMAGE"; return; fi
    if "$DOCKER" image inspect debian:bookworm-slim >/dev/null 2>&1 \
        || timeout 120 "$DOCKER" pull -q debian:bookworm-slim >/dev/null 2>&1; then
        echo debian:bookworm-slim
        return
    fi
    if ! "$DOCKER" image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
        echo "no registry image reachable: debootstrap a Debian 12 rootfs → $LOCAL_BASE" >&2
        [ "$(id -u)" = 0 ] || die "debootstrap needs root (or set BASE_IMAGE)"
        command -v debootstrap >/dev/null || die "apt-get install debootstrap (or set BASE_IMAGE)"
        debootstrap --variant=minbase bookworm "$WORK/rootfs" >"$WORK/debootstrap.log" 2>&1 \
            || die "debootstrap failed, see $WORK/debootstrap.log"
        tar -C "$WORK/rootfs" -c . | "$DOCKER" import - "$LOCAL_BASE" >/dev/null
        rm -rf "$WORK/rootfs"
    fi
    echo "$LOCAL_BASE"
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }'; }

# app NAME USER EXPECTED_RC [docker options] -- [app arguments]
# One container of the image; its output goes to $WORK/logs/NAME.log. Checks the
# exit code and that `docker diff` is empty, records the wall time.
app() {
    local name=$1 user=$2 expected=$3 opts=() rc start changes
    shift 3
    while [ "$1" != -- ]; do opts+=("$1"); shift; done
    shift
    local container="bids-amyloid-test-$name-$$"
    start=$(now)
    set +e
    "$DOCKER" run --name "$container" --user "$user" "${RUN_FLAGS[@]}" "${opts[@]}" \
        "$IMAGE" "$@" >"$WORK/logs/$name.log" 2>&1
    rc=$?
    set -e
    SECONDS_OF[$name]=$(elapsed "$start")
    changes=$("$DOCKER" diff "$container" | not_mount_points "${opts[@]}" || echo "docker diff failed")
    "$DOCKER" rm "$container" >/dev/null
    if [ "$rc" != "$expected" ]; then
        tail -n 40 "$WORK/logs/$name.log"
        printf 'FAIL %s: exit %s, expected %s (log: %s)\n' "$name" "$rc" "$expected" "$WORK/logs/$name.log"
        FAILED=$((FAILED + 1))
    else
        printf 'ok   %s: exit %s in %s s as %s\n' "$name" "$rc" "${SECONDS_OF[$name]}" "$user"
    fi
    if [ -n "$changes" ]; then
        printf 'FAIL %s wrote outside the mounts and /tmp:\n%s\n' "$name" "$changes"
        FAILED=$((FAILED + 1))
    fi
}

not_mount_points() {  # not_mount_points DOCKER_OPTIONS... < docker diff
    # drop the folders Docker itself creates as mount points (-v SRC:DEST) and their parents
    local dests=() i kind path dest keep
    for ((i = 0; i < $#; i++)); do
        if [ "${*:i+1:1}" = -v ]; then dest=${*:i+2:1}; dest=${dest#*:}; dests+=("${dest%%:*}"); fi
    done
    while read -r kind path; do
        keep=1
        for dest in "${dests[@]}"; do
            case "$dest/" in "$path"/*) [ "$kind" = A ] || [ "$kind" = C ] && keep=0 ;; esac
        done
        if [ "$keep" = 1 ]; then echo "$kind $path"; fi
    done
}

owned_by() {  # owned_by DIR UID:GID: every file and folder under DIR belongs to UID:GID
    local wrong
    wrong=$(find "$1" \( ! -uid "${2%:*}" -o ! -gid "${2#*:}" \) -printf '%u:%g %p\n' | head -n 5)
    [ -z "$wrong" ] || { printf '%s\n' "$wrong"; return 1; }
}
exists() { compgen -G "$1" >/dev/null || { echo "missing: $1"; return 1; }; }
log_has() { grep -q -- "$2" "$WORK/logs/$1.log" || { echo "$1.log lacks: $2"; return 1; }; }
tree_sum() { (cd "$1" && find . -type f -printf '%p %s %T@\n' | sort | sha256sum); }

# ---- 1-2. base and build ---------------------------------------------------------
mkdir -p "$WORK/logs"
DOCKER=$(docker_client)
"$DOCKER" info >/dev/null 2>&1 || die "no Docker daemon answers ($DOCKER info)"
echo "work folder: $WORK; docker client: $DOCKER; image: $IMAGE (WEIGHTS=$WEIGHTS)"
BASE=$(base_image)
say "build $IMAGE from $BASE"
build_args=(--network "$BUILD_NETWORK" --build-arg "BASE_IMAGE=$BASE" --build-arg "WEIGHTS=$WEIGHTS"
            --build-arg "VERSION=$VERSION" -t "$IMAGE")
if [ -n "$CA_BUNDLE" ]; then build_args+=(--secret "id=ca,src=$CA_BUNDLE"); fi
if [ "${NO_CACHE:-0}" = 1 ]; then build_args+=(--no-cache); fi
start=$(now)
DOCKER_BUILDKIT=1 "$DOCKER" build --progress plain "${build_args[@]}" "$ROOT" >"$WORK/logs/build.log" 2>&1 \
    || { tail -n 40 "$WORK/logs/build.log"; die "build failed (log: $WORK/logs/build.log)"; }
BUILD_SECONDS=$(elapsed "$start")
CACHED=$(grep -c '^#[0-9]* CACHED' "$WORK/logs/build.log" || true)
IMAGE_BYTES=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE")
echo "built in $BUILD_SECONDS s ($CACHED cached steps)"
if [ -n "$CA_BUNDLE" ]; then
    check "CA bundle not stored in the image" \
        bash -c "! '$DOCKER' history --no-trunc '$IMAGE' | grep -q BEGIN"
fi

# ---- 3. runs -------------------------------------------------------------------
SIM=$WORK/sim
OUT=$WORK/out
CFG=$WORK/cfg
mkdir -p "$SIM" "$OUT" "$CFG"
chown "$UID_GID" "$SIM" "$OUT" "$CFG"
BIDS_RO=(-v "$SIM/bids:/bids:ro")

say "version, help, simulated cohort"
app version "$UID_GID" 0 -- --version
check "--version prints $VERSION" log_has version "$VERSION"
app help "$UID_GID" 0 -- --help
check "--help lists the three levels" log_has help "participant,group,predict"
app simulate "$UID_GID" 0 -v "$SIM:/sim" --entrypoint bids-amyloid-simulate -- \
    /sim/bids --subjects $((SUBJECTS + HELD_OUT)) --size small --seed 7 --nprocs 2
# the demo's CPU protocol (deepbet, a tiny test ViT, a short schedule), from the image itself
app schedule "$UID_GID" 0 --entrypoint python -- \
    -c "from bids_amyloid.demo import CONFIG; print(CONFIG, end='')"
cp "$WORK/logs/schedule.log" "$CFG/schedule.toml"
mapfile -t SUBS < <(find "$SIM/bids" -maxdepth 1 -name 'sub-*' -type d -printf '%f\n' | sort | sed 's/^sub-//')
TRAIN=("${SUBS[@]:0:SUBJECTS}")
HELD=("${SUBS[@]:SUBJECTS}")
[ "${#HELD[@]}" -ge 1 ] || die "simulation gave ${#SUBS[@]} subjects"
BEFORE=$(tree_sum "$SIM/bids")
IO=("${BIDS_RO[@]}" -v "$OUT:/out" -v "$CFG:/cfg:ro")

say "participant → group → predict as $UID_GID"
app participant "$UID_GID" 0 "${IO[@]}" -- /bids /out participant \
    --participant-label "${TRAIN[@]}" --config /cfg/schedule.toml --nprocs 2
app group "$UID_GID" 0 --shm-size 1g "${IO[@]}" -- /bids /out group --stage all --run-name demo \
    --participant-label "${TRAIN[@]}" --config /cfg/schedule.toml --skip-bids-validation
app predict "$UID_GID" 0 "${IO[@]}" -- /bids /out predict \
    --model /out/group/demo/student_T1w.pt --participant-label "${HELD[@]}" --saliency --nprocs 2
check "participant outputs" exists "$OUT/dataset_description.json"
check "participant QC pages" exists "$OUT/sub-*.html"
check "participant preprocessed T1w" exists "$OUT/sub-*/ses-*/anat/*T1w.nii.gz"
check "group student model" exists "$OUT/group/demo/student_T1w.pt"
check "group metrics" exists "$OUT/group/demo/metrics.tsv"
check "group report" exists "$OUT/group/demo/report.html"
check "predictions" exists "$OUT/predict/student_T1w/predictions.tsv"
check "saliency pages" exists "$OUT/predict/student_T1w/sub-*.html"
check "outputs owned by $UID_GID" owned_by "$OUT" "$UID_GID"

say "errors"
app bad-invocation "$UID_GID" 64 "${IO[@]}" -- /bids /out nonsense-level
app missing-input "$UID_GID" 66 -v "$OUT:/out" -- /no/such/bids /out participant
app no-weights "$UID_GID" 66 "${IO[@]}" -- /bids /out group --stage all --run-name biomedclip \
    --participant-label "${TRAIN[@]}" --config /cfg/schedule.toml --backbone biomedclip \
    --skip-bids-validation
check "missing weights: the clear message" log_has no-weights "bids-amyloid-fetch-weights DIR"

say "weights from a read-only mount"
# a stand-in open_clip folder (the real one needs the hub): proves the mount point
# is where the image looks and that the checksummed copy verifies read-only
mkdir -p "$WORK/fake-src" "$WORK/weights"
printf '{"model_cfg": {"vision_cfg": {"timm_model_name": "vit_base_patch16_224"}}}' \
    >"$WORK/fake-src/open_clip_config.json"
head -c 4096 /dev/urandom >"$WORK/fake-src/open_clip_pytorch_model.bin"
chown -R "$UID_GID" "$WORK/fake-src" "$WORK/weights"
app weights-copy "$UID_GID" 0 -v "$WORK/fake-src:/src:ro" -v "$WORK/weights:/w" \
    --entrypoint bids-amyloid-fetch-weights -- /w --source /src
app weights-mount "$UID_GID" 0 -v "$WORK/weights:/opt/weights:ro" --entrypoint python -- -c \
    "from bids_amyloid.config import ModelConfig; from bids_amyloid.models.backbone import locate_weights; print(locate_weights(ModelConfig()).weights)"
check "weights found under the mount" log_has weights-mount /opt/weights/biomedclip/open_clip_pytorch_model.bin

if [ "$(id -u)" = 0 ]; then
    say "participant + predict as the non-root user $OTHER_UID_GID (validator, caches, HOME)"
    OUT2=$WORK/out-uid1000
    mkdir -p "$OUT2"
    chown "$OTHER_UID_GID" "$OUT2"
    IO2=("${BIDS_RO[@]}" -v "$OUT2:/out" -v "$CFG:/cfg:ro" -v "$OUT/group:/models:ro")
    app participant-uid1000 "$OTHER_UID_GID" 0 "${IO2[@]}" -- /bids /out participant \
        --participant-label "${HELD[0]}" --config /cfg/schedule.toml
    app predict-uid1000 "$OTHER_UID_GID" 0 "${IO2[@]}" -- /bids /out predict \
        --model /models/demo/student_T1w.pt --participant-label "${HELD[0]}" --saliency
    check "non-root predictions" exists "$OUT2/predict/student_T1w/predictions.tsv"
    check "outputs owned by $OTHER_UID_GID" owned_by "$OUT2" "$OTHER_UID_GID"
fi
check "BIDS input unchanged" test "$BEFORE" = "$(tree_sum "$SIM/bids")"

# ---- 5. figures ----------------------------------------------------------------
say "figures"
printf 'build time      : %s s (%s cached steps; NO_CACHE=1 for a cold build)\n' "$BUILD_SECONDS" "$CACHED"
printf 'image size      : %s = %s (%s bytes, uncompressed)\n' "$(numfmt --to=si --suffix=B "$IMAGE_BYTES")" \
    "$(numfmt --to=iec-i --suffix=B "$IMAGE_BYTES")" "$IMAGE_BYTES"
for level in simulate participant group predict participant-uid1000 predict-uid1000; do
    if [ -n "${SECONDS_OF[$level]:-}" ]; then
        printf 'wall time       : %-20s %5s s (docker run, container start included)\n' "$level" "${SECONDS_OF[$level]}"
    fi
done
printf 'cohort          : %s training + %s held-out subjects (small size)\n' "${#TRAIN[@]}" "${#HELD[@]}"
if [ "$FAILED" != 0 ]; then
    die "$FAILED check(s) failed; logs and outputs kept in $WORK"
fi
echo "image-test: PASS (read-only root file system, empty docker diff for every container)"
if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; fi
