#!/usr/bin/env bash
# The speed levers of issue 5, measured on the GPU machine in one call each (a call may run 10 minutes).
#
# Here, once:  bash bench/gpu_bundle.sh            (.gpu/wheels, liger-kernel included)
#              and a tokenizer folder in .gpu/tokenizer: the embedded model's, 3.4 MB:
#              .venv/bin/python -c "from tuner.models import resolve_model; from transformers import AutoTokenizer; \
#                AutoTokenizer.from_pretrained(resolve_model('embedded')).save_pretrained('.gpu/tokenizer')"
# There:       run  command: bash bench/gpu_levers.sh chat     carry: [".gpu/wheels", ".gpu/tokenizer"]
#              then bash bench/gpu_levers.sh levers, then bash bench/gpu_levers.sh app (same carry; the
#              7B-shaped model is written again when the machine is a fresh one: a minute or two)
#
#   chat   bench/chat_speed.py: fast decoding (static KV cache + CUDA graphs, the default on CUDA) against
#          the generate path and plain generate, merged and base + adapter, bf16 and 4-bit (~5 min)
#   levers bench/train_speed.py: the plain loop, then the levers added in turn (liger, bf16, noreentrant,
#          compile), same LoRA start and batches: s/iter, peak memory, GPU kernel time, loss difference
#   app    the plain loop with and without liger, and the app's own path (xtuner train, a job) with
#          kernels=none and kernels=liger: the before/after of the lever the spec switches
#   serve  issue 13: 1/4/20 sessions against `python -m tuner serve` (slot batcher against TUNER_BATCHING=0)
#   load   the same rows after a change, with bench/slot_first_token.py first (SESSIONS="1 1 4 20")
#   compile the batch-1 step compiled by Inductor (TOLERANCE, KINDS, LIMIT)
#   ab     the load rows under several environments (VARIANTS): e.g. decode kernels on and off
#   train  issue 12's training table: plain loop + LEVERS in turn, app rows APP_ROWS (before/after)
#   kernels bench/decode_kernels.py (bf16, 4-bit, the embedded model if carried), chat and load rows: issue 12
#   final  load rows, then the memory levers of the app's path (APP_ROWS: bench/train_speed.py --app entries)
#   serve, load and final also need carry ".gpu/wheels-api": fastapi 0.165.0 with its dependencies, made with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 ... (the versions of .venv; see the README)
# Logs and JSON land in $OUT (they come back with the call); the table is the end of the output.
set -uo pipefail
cd "$(dirname "$0")/.."
what="${1:-chat}"
S=/tmp/site
if [[ ! -f "$S/.done" ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$S" \
        .gpu/wheels/*.whl && touch "$S/.done" || exit 1
fi
export PYTHONPATH="$S" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT="${OUT:-/tmp/out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.used --format=csv,noheader
api_wheels() {  # fastapi, uvicorn, httpx, ... for `python -m tuner serve` and bench/load.py
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$S" \
        .gpu/wheels-api/*.whl
}
model_7b() {  # the 7B-shaped Llama with random weights, written once per machine
    timeout 150 python3 -c "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; \
from multigpu import make_model; make_model(Path('/tmp/llama-7b-shape'), Path('.gpu/tokenizer'))"
}
load_rows() {  # 1/4/20 sessions against `python -m tuner serve` with the slot batcher
    timeout 150 python3 bench/load.py --start --model /tmp/llama-7b-shape --time-limit 60 --out "$OUT/load.txt" \
        --sessions ${SESSIONS:-1 4 20} --server-log "$OUT/serve.log" > "$OUT/load.log" 2>&1
    echo "load rc=$?"
    tail -7 "$OUT/load.txt"
}
case "$what" in
    chat)
        timeout 560 python3 bench/chat_speed.py --tokenizer .gpu/tokenizer --json "$OUT/chat.json" \
            > "$OUT/chat.log" 2>&1
        echo "chat_speed rc=$?"
        grep -v -i "warn" "$OUT/chat.log" | tail -40
        ;;
    levers)
        timeout 570 python3 bench/train_speed.py --tokenizer .gpu/tokenizer --steps 12 \
            --levers liger,bf16,noreentrant,compile --compile-limit 150 --app "" \
            --json "$OUT/levers.json" > "$OUT/levers.log" 2>&1
        echo "train_speed rc=$?"
        grep -E "s/iter|FAILED|Error|^path|^plain|^app" "$OUT/levers.log" | tail -40
        ;;
    app)
        timeout 570 python3 bench/train_speed.py --tokenizer .gpu/tokenizer --steps 12 --levers liger \
            --app none,liger --records 1200 --json "$OUT/app.json" > "$OUT/app.log" 2>&1
        echo "train_speed rc=$?"
        grep -E "s/iter|FAILED|Error|^path|^plain|^app" "$OUT/app.log" | tail -40
        ;;
    serve)
        # issue 13 on the GPU: the 7B-shaped model behind `python -m tuner serve`, 1/4/20 sessions, the slot
        # batcher (CUDA-graph steps, the default) against TUNER_BATCHING=0 (the batch-1 decoder, one reply at a
        # time: the GPU path before); then the batch-1 chat rows (slot batch vs batch-1 decoder). Needs also
        # carry ".gpu/wheels-api" (fastapi, uvicorn, httpx, ...: bench/gpu_levers.sh's header).
        api_wheels && model_7b || exit 1
        timeout 330 python3 bench/load.py --start --compare-unbatched --model /tmp/llama-7b-shape \
            --time-limit 60 --out "$OUT/load.txt" --server-log "$OUT/serve.log" > "$OUT/load.log" 2>&1
        echo "load rc=$?"
        grep -v -i "warn" "$OUT/load.log" | tail -20; grep -i -E "error|traceback|graphs off" "$OUT/serve.log" | tail -8
        timeout 150 python3 bench/chat_speed.py --kinds merged --json "$OUT/chat.json" > "$OUT/chat.log" 2>&1
        echo "chat_speed rc=$?"
        grep -v -i "warn" "$OUT/chat.log" | tail -12
        ;;
    compile)
        # issue 12: the batch-1 decoder's step compiled by Inductor before capture (TUNER_DECODE_COMPILE=1),
        # merged bf16 and merged 4-bit
        model_7b || exit 1
        TUNER_BATCHING=0 TUNER_DECODE_COMPILE=1 TUNER_DECODE_TOLERANCE=${TOLERANCE:-0.02} timeout ${LIMIT:-330} \
            python3 bench/chat_speed.py --kinds ${KINDS:-merged,merged-4bit} --json "$OUT/compile.json" \
            > "$OUT/compile.log" 2>&1
        echo "chat_speed (compile) rc=$?"
        grep -v -i "warn" "$OUT/compile.log" | tail -14
        ;;
    load)
        # the slot batcher after a change: first tokens of lone replies, the load rows, the batch-1 chat rows
        api_wheels && model_7b || exit 1
        timeout 60 python3 bench/slot_first_token.py --model /tmp/llama-7b-shape 2>&1 | grep -v -i warn | tail -8
        load_rows
        timeout 150 python3 bench/chat_speed.py --kinds merged --json "$OUT/chat.json" > "$OUT/chat.log" 2>&1
        echo "chat_speed rc=$?"
        grep -v -i "warn" "$OUT/chat.log" | tail -6
        ;;
    final)
        # one call: the load rows (slot batcher, every reply) and the memory levers of the app's path
        api_wheels && model_7b || exit 1
        timeout 60 python3 bench/slot_first_token.py --model /tmp/llama-7b-shape 2>&1 | grep -v -i warn | tail -8
        load_rows
        timeout 280 python3 bench/train_speed.py --tokenizer .gpu/tokenizer --no-plain --records 600 \
            --app ${APP_ROWS:-liger,liger+paged8bit+offload,liger+8bit+offload,liger+8bit+offload+r16} \
            --json "$OUT/memory.json" > "$OUT/memory.log" 2>&1
        echo "train_speed rc=$?"
        grep -h "tuner: " "$OUT"/app-xtuner-*.log 2>/dev/null | sort | uniq -c | tail -5
        grep -E "^row done|^path|^app|failed|Error" "$OUT/memory.log" | tail -20
        ;;
    kernels)
        # issue 12's chat rows: tuner/decode_kernels.py's levers alone and together (bf16 with the eager step's
        # kernel profile, then 4-bit), the embedded model's real weights where /tmp/smol.gguf was carried (the
        # greedy column means something there: bench/gpu_bundle.sh's README says how the GGUF travels), then
        # the chat rows with the levers on (the default) and the load rows (NO_LOAD=1 skips them)
        api_wheels && model_7b || exit 1
        for bits in ${LEVER_RUNS:---profile --four-bit}; do  # LEVER_RUNS=--profile: bf16 only; none: no runs
            [[ "$bits" == none ]] && continue
            timeout 170 python3 bench/decode_kernels.py --model-dir /tmp/llama-7b-shape $bits \
                > "$OUT/kernels$bits.log" 2>&1
            echo "decode_kernels $bits rc=$?"
            grep -v -i "warn" "$OUT/kernels$bits.log" | grep -v "^('" | tail -32
        done
        if [[ -f /tmp/smol.gguf ]]; then
            TUNER_EMBEDDED_GGUF=/tmp/smol.gguf timeout 100 python3 bench/decode_kernels.py \
                --model-dir embedded:SmolLM2-135M-Instruct > "$OUT/kernels-embedded.log" 2>&1
            echo "decode_kernels (embedded model, real weights) rc=$?"
            grep -v -i "warn" "$OUT/kernels-embedded.log" | grep -v "^('" | tail -12
        fi
        timeout ${CHAT_LIMIT:-170} python3 bench/chat_speed.py --kinds ${KINDS:-merged,merged-4bit,adapter-4bit} --before-tokens 16 \
            --json "$OUT/chat.json" > "$OUT/chat.log" 2>&1
        echo "chat_speed rc=$?"
        grep -v -i "warn" "$OUT/chat.log" | tail -14
        [[ -n "${NO_LOAD:-}" ]] || load_rows
        ;;
    train)
        # issue 12's training table: the plain loop and each lever added in turn (LEVERS), then the app's path
        # (xtuner train) before and after (APP_ROWS: bench/train_speed.py --app entries; PLAIN=no: app rows only)
        model_7b || exit 1
        timeout ${LIMIT:-540} python3 bench/train_speed.py --tokenizer .gpu/tokenizer --steps ${STEPS:-10} \
            --levers "${LEVERS-bf16,fused,liger}" --app "${APP_ROWS:-peft+fp32w,auto+b2,auto}" \
            --records ${RECORDS:-1200} ${PLAIN:+--no-plain} --json "$OUT/train.json" > "$OUT/train.log" 2>&1
        echo "train_speed rc=$?"
        grep -h "tuner: " "$OUT"/app-xtuner-*.log 2>/dev/null | sort | uniq -c | tail -8
        grep -E "s/iter|FAILED|Error|^path|^plain|^app|^row done" "$OUT/train.log" | tail -30
        ;;
    profile)
        # where the training step's host time goes (bench/train_step_profile.py), then batch sizes
        model_7b || exit 1
        for levers in ${PROFILE_LEVERS:-none bf16,fused,liger}; do
            [[ "$levers" == none ]] && levers=""
            timeout ${LIMIT:-200} python3 bench/train_step_profile.py --tokenizer .gpu/tokenizer --levers "$levers" \
                --batches ${BATCHES:-1,2,4} > "$OUT/profile-${levers:-plain}.log" 2>&1
            echo "train_step_profile ${levers:-plain} rc=$?"
            grep -v -i "warn" "$OUT/profile-${levers:-plain}.log" | head -${HEAD:-75}
        done
        ;;
    ab)
        # the load rows under each setting of VARIANTS ("|"-separated environments; "default" is none), in one
        # process tree each, one after the other on the same machine: what a default costs the batched path
        api_wheels && model_7b || exit 1
        IFS='|' read -r -a variants <<< "${VARIANTS:-default|TUNER_DECODE_KERNELS=0|TUNER_SLOT_WARM_LENGTH=512}"
        for variant in "${variants[@]}"; do
            echo "== $variant"
            if [[ "$variant" == default ]]; then load_rows; else env $variant bash -c "$(declare -f load_rows); OUT=$OUT SESSIONS='${SESSIONS:-1 4 20}' load_rows"; fi
        done
        ;;
    *)
        echo "usage: bash bench/gpu_levers.sh chat|levers|app|serve|compile|load|final|kernels" >&2
        exit 2
        ;;
esac
