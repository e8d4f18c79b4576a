#!/usr/bin/env bash
# A tour of the whole lifecycle on this machine: build the agent, start it with a small HTTP app,
# then play the platform's part with curl: ready, validate, run, suspend, resume, terminate.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p microvm-agent
agent=target/release/microvm-agent
port=${PORT:-19000}
app_port=${APP_PORT:-18080}
state=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$state"' EXIT
pid=

$agent --listen "127.0.0.1:$port" --state-dir "$state" --log-format text \
  -- python3 -m http.server "$app_port" --bind 127.0.0.1 >/dev/null 2>"$state/agent.log" &
pid=$!
hook() { # method path [body]
  local out
  out=$(curl -s -X "$1" "localhost:$port$2" ${3:+-d "$3"} -w ' [%{http_code}]')
  printf '%-5s %-11s -> %s\n' "$1" "$2" "${out//$'\n'/}"
}
until curl -s "localhost:$port/status" >/dev/null; do sleep 0.05; done
hook GET  /ready
hook POST /validate
hook POST /run '{"microvmId":"vm-demo","runHookPayload":"{\"tenant\":\"t1\"}"}'
echo "           payload on disk: $(cat "$state/run-payload")"
hook POST /run '{"microvmId":"vm-demo","runHookPayload":"{\"tenant\":\"t1\"}"}'
hook POST /suspend
hook POST /resume
hook GET  /status
hook POST /terminate
wait $pid && code=0 || code=$?
echo "agent exited with $code (the app's: 143 = stopped by SIGTERM)"
echo "--- the agent's log (stderr):"
cat "$state/agent.log"
