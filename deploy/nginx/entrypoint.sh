#!/bin/sh
# nginx resolves `serve` at request time through the container's DNS server, so replicas that
# `--scale` adds or removes are found without a restart. That server is 127.0.0.11 under Docker and the
# network's gateway under Podman: take it from resolv.conf.
set -eu
resolver=$(awk '$1 == "nameserver" { print $2; exit }' /etc/resolv.conf)
case "$resolver" in
    *:*) resolver="[$resolver]" ;;  # IPv6
    "") echo "namegen-lb: no nameserver in /etc/resolv.conf" >&2; exit 1 ;;
esac
sed -e "s/@RESOLVER@/$resolver/" -e "s/@UPSTREAM@/${UPSTREAM:-serve:8000}/" \
    /etc/nginx/namegen.conf.template > /tmp/nginx.conf
echo "namegen-lb: proxying :8080 to ${UPSTREAM:-serve:8000} (every address it resolves to, via $resolver)" >&2
exec nginx -c /tmp/nginx.conf -g "daemon off;"
