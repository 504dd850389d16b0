# Sourced by run-local.sh and the deployment tests: free loopback ports, waiting for a
# listener, and a tansu broker started the way it needs to be. The caller defines
# PIDS=() (every started process is appended, for its cleanup trap).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT: returns once something accepts on 127.0.0.1:PORT (30 s at most).
wait_port() {
  for _ in $(seq 1 300); do
    if python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$1)))"; then return 0; fi
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}

# start_tansu DIR PORT [ADVERTISED_PORT] [tansu flags…]: a broker with SQLite storage in
# DIR, listening on PORT and advertising ADVERTISED_PORT (default PORT); log DIR.log.
# NOTE: tansu reads generic variables (STORAGE_ENGINE, LISTENER_URL, …) and a .env in
# its working directory, so it gets a clean environment and a folder of its own; the
# SQLite URL is relative because an absolute one is joined onto the working directory.
start_tansu() {
  local dir="$1" port="$2" advertised="${3:-$2}"
  shift 2; [[ $# -gt 0 ]] && shift
  mkdir -p "$dir"
  (cd "$dir" && exec env -i PATH="$PATH" RUST_LOG=warn "$PAYDEDUP_TANSU" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$advertised" \
    --storage-engine sqlite://tansu.db "$@" >"$dir.log" 2>&1) &
  PIDS+=($!)
  wait_port "$port"
}
