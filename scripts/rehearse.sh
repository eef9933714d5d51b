#!/usr/bin/env bash
# `make rehearse`: the paper profile's wiring at toy sizes on this machine (params/paper-rehearsal.yaml).
#
#   bash scripts/rehearse.sh [MAKE-ARGS...]      (the Makefile passes PY=... and PROFILE/RUN)
#
# Starts the replay teacher (scoder_lib/method/replay.py: an OpenAI-compatible endpoint that answers
# with committed teacher samples) on 127.0.0.1:$REHEARSE_PORT, waits until it answers, runs the study
# through `make reproduce` (the same stage rules and papermill call as any run), and stops the server
# on exit, failure or interrupt included. The API key is a fake one, exported for both sides.
set -euo pipefail

PY=${PY:-.venv/bin/python}
MAKE=${MAKE:-make}
PROFILE=${PROFILE:-paper-rehearsal}
RUN=${RUN:-rehearsal}
OUTPUTS=${OUTPUTS:-outputs}
REHEARSE_PORT=${REHEARSE_PORT:-8011}  # params/paper-rehearsal.yaml's teacher base_url names this port
SEED_FILE=${SEED_FILE:-data/seed/seed_v1.jsonl}  # paper's prompt version (v1) and its teacher seed set

export SCODER_REHEARSAL_API_KEY=rehearsal-not-a-secret  # the profile's teacher api_key_env

if curl -s -o /dev/null "http://127.0.0.1:$REHEARSE_PORT/v1/models"; then
    echo "rehearse: port $REHEARSE_PORT is already in use (another rehearsal?); stop it first" >&2
    exit 1
fi

mkdir -p "$OUTPUTS"
log="$OUTPUTS/$RUN-replay-teacher.log"
"$PY" -m scoder_lib.method.replay --seed-file "$SEED_FILE" --port "$REHEARSE_PORT" \
    --api-key-env SCODER_REHEARSAL_API_KEY >"$log" 2>&1 &
server=$!
stop() {
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

for _ in $(seq 120); do
    if curl -sf -o /dev/null -H "Authorization: Bearer $SCODER_REHEARSAL_API_KEY" \
        "http://127.0.0.1:$REHEARSE_PORT/v1/models"; then
        break
    fi
    kill -0 "$server" 2>/dev/null || { echo "rehearse: the replay teacher exited (log: $log):" >&2; tail -5 "$log" >&2; exit 1; }
    sleep 0.5
done
curl -sf -o /dev/null -H "Authorization: Bearer $SCODER_REHEARSAL_API_KEY" "http://127.0.0.1:$REHEARSE_PORT/v1/models" ||
    { echo "rehearse: the replay teacher did not answer within 60 s (log: $log)" >&2; exit 1; }
echo "rehearse: replay teacher on http://127.0.0.1:$REHEARSE_PORT/v1 (pid $server, log $log)"

start=$SECONDS
"$MAKE" --no-print-directory reproduce PROFILE="$PROFILE" RUN="$RUN" "$@"
echo "rehearse: done in $((SECONDS - start)) s. Report index: $OUTPUTS/$RUN/reports/index.html"
