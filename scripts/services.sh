#!/usr/bin/env bash
# Makes sure the services the test suite needs are running: a Redis on 127.0.0.1:6379
# (installed from Debian's packages if missing). Safe to run any number of times.
set -euo pipefail

redis_up() {
    # Bash's /dev/tcp needs no client: send PING, expect +PONG.
    exec 3<>/dev/tcp/127.0.0.1/6379 2>/dev/null || return 1
    printf 'PING\r\n' >&3
    local reply
    read -r -t 2 reply <&3 || reply=""
    exec 3>&-
    [[ "$reply" == +PONG* ]]
}

if redis_up; then
    echo "redis: up on 127.0.0.1:6379"
    exit 0
fi

if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis: installing redis-server"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server redis-tools >/dev/null
fi

echo "redis: starting on 127.0.0.1:6379"
redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
for _ in $(seq 1 50); do
    if redis_up; then
        echo "redis: up on 127.0.0.1:6379"
        exit 0
    fi
    sleep 0.1
done
echo "redis: did not come up on 127.0.0.1:6379" >&2
exit 1
