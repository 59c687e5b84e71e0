#!/usr/bin/env bash
# Start this machine's PostgreSQL, Redis and RabbitMQ if they are not answering (idempotent).
# They are normally started before a session or CI run; this covers a stopped one.
set -uo pipefail
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_up() { for _ in $(seq 1 60); do up "$1" && return 0; sleep 1; done; echo "$2 did not come up on :$1" >&2; return 1; }
if ! up 5432 && command -v pg_ctlcluster >/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start; wait_up 5432 PostgreSQL
fi
if ! up 6379 && command -v redis-server >/dev/null; then
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log; wait_up 6379 Redis
fi
if ! up 5672 && command -v rabbitmq-server >/dev/null; then
  rabbitmq-server -detached; wait_up 5672 RabbitMQ
fi
for p in 5432 6379 5672; do up $p && echo "service on 127.0.0.1:$p: up" || echo "service on 127.0.0.1:$p: DOWN"; done
exit 0
