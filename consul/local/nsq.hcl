# NSQ's own daemons in the Procfile topology (scripts/run.sh --consul), as Consul service
# definitions: nsqd, nsqlookupd and nsqadmin do not register themselves. Loaded by the dev
# agent with -config-dir=consul/local. Each has an HTTP check on its /ping.
#
# The services read these: consumers take nsqlookupd's HTTP port (its service port, or meta
# http_port), producers take nsqd's TCP port (meta tcp_port, else the service port).

services {
  id      = "nsqlookupd-1"
  name    = "nsqlookupd"
  address = "127.0.0.1"
  port    = 4161
  meta    = { http_port = "4161", tcp_port = "4160" }
  check {
    name     = "nsqlookupd /ping"
    http     = "http://127.0.0.1:4161/ping"
    interval = "5s"
    timeout  = "2s"
  }
}

services {
  id      = "nsqd-1"
  name    = "nsqd"
  address = "127.0.0.1"
  port    = 4150
  meta    = { tcp_port = "4150", http_port = "4151" }
  check {
    name     = "nsqd /ping"
    http     = "http://127.0.0.1:4151/ping"
    interval = "5s"
    timeout  = "2s"
  }
}

services {
  id      = "nsqadmin-1"
  name    = "nsqadmin"
  address = "127.0.0.1"
  port    = 4171
  check {
    name     = "nsqadmin /ping"
    http     = "http://127.0.0.1:4171/ping"
    interval = "5s"
    timeout  = "2s"
  }
}
