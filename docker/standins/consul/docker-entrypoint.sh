#!/bin/sh
# The official image's entrypoint, reduced to what the compose file uses: flags alone mean
# `agent`; `agent` gets the image's data and config directories; anything else runs as given.
set -e
if [ "${1#-}" != "$1" ]; then
  set -- agent "$@"
fi
if [ "$1" = agent ]; then
  shift
  set -- consul agent -data-dir=/consul/data -config-dir=/consul/config "$@"
fi
exec "$@"
